"""Which parameters mattered: fANOVA importances, computed beside the other figures."""

from __future__ import annotations

import os
import pickle
import sys
import threading
from dataclasses import dataclass

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial

from hpsearch.config import StudyConfig
from hpsearch.plots.common import (
    IMPORTANCE_MAX_TRIALS,
    IMPORTANCE_MIN_TRIALS,
    Views,
    memory_study,
    titled,
    varied,
)

#: From this many completed trials on, and only in a process with no other thread, fANOVA
#: runs in a forked child while this process draws the other figures: importing it (it pulls in
#: scikit-learn and SciPy) and fitting its forest cost seconds, and there is a second core.
IMPORTANCE_ASIDE_MIN = 100


@dataclass
class _Aside:
    pid: int
    fd: int

    def collect(self, views: Views) -> bool:
        """Adds the child's figure and notes; False if it failed (then compute them here)."""
        with os.fdopen(self.fd, "rb") as f:
            payload = f.read()
        os.waitpid(self.pid, 0)
        if not payload:
            return False
        # Our own child's bytes, through a pipe only the two of us hold: not a file anyone
        # else could have written.
        figs, notes = pickle.loads(payload)
        views.figures.update({k: go.Figure(v) for k, v in figs.items()})
        views.notes.update(notes)
        return True


def _importances_aside(snap: optuna.Study, done: list[FrozenTrial], names: list[str],
                       cfg: StudyConfig) -> _Aside | None:
    if (len(done) < IMPORTANCE_ASIDE_MIN or not hasattr(os, "fork")
            or threading.active_count() > 1 or "optuna.importance" in sys.modules):
        return None  # small, already imported, or forking could inherit a held lock
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            side = Views()
            _add_importances(side, snap, done, names, cfg)
            data = pickle.dumps(({k: f.to_plotly_json() for k, f in side.figures.items()},
                                 side.notes))
            with os.fdopen(w, "wb") as f:
                f.write(data)
        finally:
            os._exit(0)
    os.close(w)
    return _Aside(pid, r)


def _add_importances(
    views: Views, snap: optuna.Study, done: list[FrozenTrial], names: list[str],
    cfg: StudyConfig,
) -> None:
    moved = varied(names, done)
    if len(done) < IMPORTANCE_MIN_TRIALS or len(moved) < 2:
        views.notes["importances"] = (
            f"Importances need at least {IMPORTANCE_MIN_TRIALS} completed trials and 2 varied "
            f"parameters (have {len(done)} completed, {len(moved)} varied)."
        )
        return
    study, note = snap, None
    if len(done) > IMPORTANCE_MAX_TRIALS:
        idx = np.linspace(0, len(done) - 1, IMPORTANCE_MAX_TRIALS).round().astype(int)
        study = memory_study(snap.study_name, snap.direction, [done[i] for i in sorted(set(idx))])
        note = (f"Computed on {IMPORTANCE_MAX_TRIALS} of {len(done)} completed trials "
                "(evenly spaced by trial number) to keep the report fast.")
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=16, max_depth=8, seed=0)
    try:
        fig = optuna.visualization.plot_param_importances(
            study, evaluator=evaluator, params=moved, target_name=cfg.metric
        )
    except Exception as e:  # fANOVA rejects some degenerate samples (e.g. a constant metric)
        views.notes["importances"] = f"Importances could not be computed: {e}"
        return
    views.figures["importances"] = titled(fig, f"fANOVA importance for {cfg.metric}", 360)
    if note:
        views.notes["importances"] = note

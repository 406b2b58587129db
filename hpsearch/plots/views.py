"""Every figure and note the study's trials allow, for the report and for notebooks."""

from __future__ import annotations

import optuna
import plotly.graph_objects as go

from hpsearch.config import StudyConfig
from hpsearch.plots.common import Views, completed, param_names, snapshot, titled
from hpsearch.plots.curves import history_figure, learning_curves_figure
from hpsearch.plots.importances import _add_importances, _importances_aside
from hpsearch.plots.landscape import _add_landscape


def figures(study: optuna.Study, cfg: StudyConfig) -> dict[str, go.Figure]:
    """Every figure the study's trials allow, keyed by report section; for notebooks."""
    return build_views(snapshot(study), cfg).figures


def build_views(snap: optuna.Study, cfg: StudyConfig) -> Views:
    """Figures and notes of a snapshot; degenerate studies give notes, never exceptions."""
    trials = snap.get_trials(deepcopy=False)
    done = completed(trials)
    names = param_names(cfg, trials)
    views = Views()
    aside = _importances_aside(snap, done, names, cfg) if done else None
    if not done:
        msg = "No completed trial yet: nothing to plot against the metric."
        for key in ("history", "landscape", "parallel", "slice", "importances"):
            views.notes[key] = msg
    else:
        views.figures["history"] = history_figure(snap, cfg)
    curves = learning_curves_figure(trials, cfg)
    if curves is None:
        views.notes["learning-curves"] = "No trial has reported intermediate values yet."
    else:
        views.figures["learning-curves"] = curves
    if done:
        _add_landscape(views, trials, cfg)
        params = [p for p in names if any(p in t.params for t in done)]
        views.figures["parallel"] = titled(
            optuna.visualization.plot_parallel_coordinate(
                snap, params=params, target_name=cfg.metric
            ),
            "Parallel coordinates of completed trials",
        )
        views.figures["slice"] = titled(
            optuna.visualization.plot_slice(snap, params=params, target_name=cfg.metric),
            "Metric against each parameter",
        )
        if aside is None or not aside.collect(views):
            _add_importances(views, snap, done, names, cfg)
    return views

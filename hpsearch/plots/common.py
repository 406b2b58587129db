"""What every view of the study shares: the snapshot it is drawn from and a few helpers."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import StudyConfig

#: fANOVA's cost grows with trees x depth x trials; past this many completed trials the
#: importances see an evenly spaced subsample, which the page says.
IMPORTANCE_MAX_TRIALS = 200


IMPORTANCE_MIN_TRIALS = 4


LANDSCAPE_GRID = 60

#: The landscape leaves blank every grid cell farther than this from its nearest completed trial,
#: in axis spans (log10 on log axes): a kernel average there would only repeat distant trials'
#: values as if someone had measured them. 0.15 keeps about half the plane for 10 random trials
#: and most of it for 30, while a region a quarter of an axis away from every trial stays empty.
LANDSCAPE_RADIUS = 0.15


FIG_HEIGHT = 460


COLORSCALE = "Viridis"


@dataclass
class Views:
    """What the report shows: drawable figures, and for each section what to say instead/too."""

    figures: dict[str, go.Figure] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def snapshot(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of the study's trials, read from its storage exactly once."""
    return memory_study(study.study_name, study.direction, study.get_trials(deepcopy=False))


class _Snapshot(optuna.storages.InMemoryStorage):
    """A storage nobody writes to after it is filled: its trials are handed out uncopied.

    Optuna's plots ask for deep copies of every trial, which for 500 trials cost more than
    drawing some of the figures.
    """

    def get_all_trials(self, study_id, deepcopy=True, states=None):
        return super().get_all_trials(study_id, deepcopy=False, states=states)


def memory_study(
    name: str, direction: optuna.study.StudyDirection, trials: list[FrozenTrial]
) -> optuna.Study:
    # A copy is not news: without this, each one logs "A new study created" at INFO level.
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(study_name=name, direction=direction, storage=_Snapshot())
    finally:
        optuna.logging.set_verbosity(verbosity)
    study.add_trials(trials)
    return study


def completed(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and finite(t.value)]


def finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def param_names(cfg: StudyConfig, trials: list[FrozenTrial]) -> list[str]:
    """The study file's parameters first, then any that only old trials carry."""
    names = list(cfg.search_space)
    extra = sorted({p for t in trials for p in t.params} - set(names))
    return names + extra


def varied(names: list[str], trials: list[FrozenTrial]) -> list[str]:
    return [p for p in names if len({repr(t.params[p]) for t in trials if p in t.params}) > 1]


def titled(fig: go.Figure, title: str, height: int = FIG_HEIGHT) -> go.Figure:
    fig.update_layout(title={"text": title}, height=height, template="plotly_white")
    return fig


def log_ticks(lo: float, hi: float) -> dict:
    """Axis settings for a log axis: one labelled tick per decade, as powers of ten.

    Plotly's default labels every 2 and 5 between decades, which at report size smears into an
    unreadable row. Spans under two decades keep the default, which then has too few decades to
    label otherwise.
    """
    style = {"exponentformat": "power", "showexponent": "all"}
    if lo > 0 and hi > 0 and math.log10(hi / lo) >= 2:
        style.update(dtick=1, minor={"ticks": "outside", "ticklen": 3, "dtick": "D1",
                                     "showgrid": False})
    return style


def best_of(done: list[FrozenTrial], cfg: StudyConfig) -> FrozenTrial:
    pick = max if cfg.direction == "maximize" else min
    return pick(done, key=lambda t: t.value)


def fmt_value(v: Any) -> str:
    """A parameter's value as the report prints it: four significant digits for a float."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def params_text(params: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {fmt_value(v)}" for k, v in params.items())

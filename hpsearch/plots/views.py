"""Every figure and note the study's trials allow, for the report and for notebooks."""

from __future__ import annotations

import re

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial

from hpsearch.config import StudyConfig
from hpsearch.confirm import standings
from hpsearch.plots.common import (
    FIG_HEIGHT,
    Views,
    completed,
    log_ticks,
    param_names,
    snapshot,
    titled,
)
from hpsearch.plots.curves import (
    grad_norms_figure,
    health_trials,
    history_figure,
    learning_curves_figure,
    metrics_rows,
)
from hpsearch.plots.finalists import finalists_figure
from hpsearch.plots.importances import _add_importances, _importances_aside
from hpsearch.plots.landscape import _add_landscape

#: Longest line of a parallel-coordinates axis label: names are broken after an underscore.
LABEL_LINE = 14

#: Characters of label, summed over the axes, that fit side by side under a report-wide plot
#: (about 7 px each); past it the labels are angled instead, one line each.
LABEL_ROW = 100


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
    finals = finalists_figure(standings(trials, cfg), cfg)
    if finals is not None:
        views.figures["finalists"] = finals
    logs = {t.number: metrics_rows(t, cfg, trials) for t in health_trials(trials, cfg)}
    norms = grad_norms_figure(logs)
    if norms is None:
        views.notes["gradient-norms"] = (
            "No trial has logged gradient norms here (trainer.monitor_every: 0, or the trial "
            "folders are not on this machine).")
    else:
        views.figures["gradient-norms"] = norms
    if done:
        _add_landscape(views, trials, cfg)
        params = [p for p in names if any(p in t.params for t in done)]
        views.figures["parallel"] = parallel_figure(snap, params, cfg)
        views.figures["slice"] = slice_figure(snap, params, done, cfg)
        if aside is None or not aside.collect(views):
            _add_importances(views, snap, done, names, cfg)
    return views


def parallel_figure(snap: optuna.Study, params: list[str], cfg: StudyConfig) -> go.Figure:
    """Optuna's parallel coordinates, with axis labels that do not run into each other.

    Optuna writes each name on one line under its axis (cut at 20 characters), so a handful of
    names like ``per_device_train_batch_size`` overlap into one unreadable line.
    """
    fig = optuna.visualization.plot_parallel_coordinate(snap, params=params, target_name=cfg.metric)
    # Optuna's axes: the metric, then the parameters in sorted order.
    names = [cfg.metric, *sorted(set(params))]
    ticks = fig.layout.xaxis.ticktext
    height = FIG_HEIGHT
    if ticks is not None and len(ticks) == len(names):
        wrapped = [wrap_label(n) for n in names]
        widest = max(len(line) for w in wrapped for line in w)
        if len(names) * (widest + 2) <= LABEL_ROW:
            axis = {"ticktext": ["<br>".join(w) for w in wrapped], "tickangle": 0}
            bottom = 30 + 16 * max(len(w) for w in wrapped)
        else:
            axis = {"ticktext": names, "tickangle": -45}
            bottom = 30 + int(0.75 * 7 * max(len(n) for n in names))
        # One update: each one of a figure with a trace per trial costs milliseconds.
        fig.update_layout(xaxis={**axis, "automargin": True}, margin={"b": bottom})
        height += max(0, bottom - 80)  # the labels' room comes on top, not out of the plot
    return titled(fig, "Parallel coordinates of completed trials", height)


def wrap_label(name: str, width: int = LABEL_LINE) -> list[str]:
    """``name`` in lines of at most ``width`` characters, broken after underscores where it can;
    joined back together the lines give the name exactly."""
    parts: list[str] = []
    for seg in re.findall(r"[^_]*_|[^_]+$", name):
        parts += [seg[i:i + width] for i in range(0, len(seg), width)]
    lines = [""]
    for seg in parts:
        if lines[-1] and len(lines[-1]) + len(seg) > width:
            lines.append(seg)
        else:
            lines[-1] += seg
    return lines


def slice_figure(
    snap: optuna.Study, params: list[str], done: list[FrozenTrial], cfg: StudyConfig
) -> go.Figure:
    """Optuna's slices, with one power-of-ten label per decade on log axes."""
    fig = optuna.visualization.plot_slice(snap, params=params, target_name=cfg.metric)
    axes = {}
    for key in fig.layout:
        ax = fig.layout[key]
        if key.startswith("xaxis") and ax.type == "log":
            name = ax.title.text
            seen = [t.params[name] for t in done if name in t.params]
            if seen:
                axes[key] = log_ticks(min(seen), max(seen))
    fig.update_layout(axes)
    return titled(fig, "Metric against each parameter")

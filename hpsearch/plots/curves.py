"""How the search went: the metric per trial, every trial's validation curve, and for a few
trials what their ``metrics.jsonl`` logged step by step (loss, learning rate, validation scores).

The study database holds one number per evaluation; the per-step loss and learning rate, and
the per-type scores of every evaluation, are only in each trial's folder. Those readers tolerate
a missing or half-written file: a study may be looked at from a machine that has its database
but not its trial folders, or while a trial is still writing its log.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState
from plotly.subplots import make_subplots

from hpsearch.attrs import A_DIR, A_FROM
from hpsearch.config import StudyConfig
from hpsearch.plots.common import best_of, completed, log_ticks, titled
from hpsearch.trainer.trial_dir import METRICS, trial_dir

#: Points per training-loss trace at most: a real trial logs every step, and ten trials of 20,000
#: steps each would make a notebook of megabytes. Longer logs are averaged over equal runs of
#: steps, which also takes the batch-to-batch noise out of the loss.
STEP_POINTS = 400

#: Colours of the trials in the step curves: the same trial has the same colour in every panel.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")


def history_figure(snap: optuna.Study, cfg: StudyConfig) -> go.Figure:
    fig = optuna.visualization.plot_optimization_history(snap, target_name=cfg.metric)
    return titled(fig, f"{cfg.metric} per trial and the best so far")


def learning_curves_figure(trials: list[FrozenTrial], cfg: StudyConfig) -> go.Figure | None:
    """One trace per trial state (not per trial), so 500 trials stay a light page."""
    styles = {
        TrialState.COMPLETE: ("completed", {"color": "#1f77b4", "width": 1.3}),
        TrialState.PRUNED: ("pruned", {"color": "#d62728", "width": 1.3, "dash": "dash"}),
        TrialState.RUNNING: ("running", {"color": "#7f7f7f", "width": 1.3, "dash": "dot"}),
        TrialState.FAIL: ("failed", {"color": "#ff7f0e", "width": 1.0, "dash": "dot"}),
    }
    fig = go.Figure()
    ends_x, ends_y, ends_text = [], [], []
    for state, (label, line) in styles.items():
        xs: list[Any] = []
        ys: list[Any] = []
        text: list[Any] = []
        for t in trials:
            if t.state != state or not t.intermediate_values:
                continue
            steps = sorted(t.intermediate_values)
            xs += [*steps, None]
            ys += [*(t.intermediate_values[s] for s in steps), None]
            text += [f"trial {t.number}"] * len(steps) + [None]
            if state == TrialState.PRUNED:
                ends_x.append(steps[-1])
                ends_y.append(t.intermediate_values[steps[-1]])
                ends_text.append(f"trial {t.number} pruned")
        if xs:
            fig.add_trace(go.Scatter(
                x=xs, y=ys, text=text, mode="lines", name=label, line=line, opacity=0.7,
                hovertemplate="%{text}<br>step %{x}<br>%{y:.4f}<extra></extra>",
            ))
    if not fig.data:
        return None
    if ends_x:
        fig.add_trace(go.Scatter(
            x=ends_x, y=ends_y, text=ends_text, mode="markers", name="pruned here",
            marker={"symbol": "x", "color": "#d62728", "size": 8},
            hovertemplate="%{text}<br>step %{x}<br>%{y:.4f}<extra></extra>",
        ))
    done = completed(trials)
    if done:
        best = best_of(done, cfg)
        if best.intermediate_values:
            steps = sorted(best.intermediate_values)
            fig.add_trace(go.Scatter(
                x=steps, y=[best.intermediate_values[s] for s in steps], mode="lines+markers",
                name=f"best (trial {best.number})", line={"color": "black", "width": 3},
            ))
    fig.update_layout(xaxis_title="step", yaxis_title=cfg.metric, legend_title="trial state")
    return titled(fig, f"Validation {cfg.metric} during training")


def trial_folder(trial: FrozenTrial, cfg: StudyConfig) -> Path:
    """Where the trial wrote its files: the recorded folder, else where the study lays it out
    (the record is relative to where the search ran, which need not be here)."""
    recorded = trial.system_attrs.get(A_DIR)
    if recorded and Path(recorded).is_dir():
        return Path(recorded)
    return trial_dir(cfg.out, trial.number)


def _read_rows(folder: Path) -> list[dict[str, Any]]:
    try:
        lines = (folder / METRICS).read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:  # the last line of a log still being written
            continue
        if isinstance(row, dict) and "step" in row:
            rows.append(row)
    return rows


def metrics_rows(
    trial: FrozenTrial, cfg: StudyConfig, trials: Iterable[FrozenTrial] = ()
) -> list[dict[str, Any]]:
    """Everything the trial logged, in step order: rows with ``loss`` and ``lr`` per training
    step, rows with ``eval`` and ``val_*`` scores per evaluation.

    A trial that continues an interrupted one logs only from where it resumed; the steps before
    are in its predecessor's folder. Given the study's ``trials``, the predecessors' rows up to
    that step are put in front, so a continued trial shows one whole run, as its pruner saw it.
    """
    came_from = {t.system_attrs[A_DIR]: t.system_attrs[A_FROM] for t in trials
                 if A_DIR in t.system_attrs and A_FROM in t.system_attrs}
    rows = _read_rows(trial_folder(trial, cfg))
    folder, seen = trial.system_attrs.get(A_FROM), set()
    while folder and folder not in seen:
        seen.add(folder)
        first = rows[0]["step"] if rows else math.inf
        rows = [r for r in _read_rows(Path(folder)) if r["step"] < first] + rows
        folder = came_from.get(folder)
    return rows


def _thin(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """At most ``n`` rows: each the mean loss of a run of steps, at that run's last step."""
    if len(rows) <= n:
        return rows
    size = math.ceil(len(rows) / n)
    out = []
    for i in range(0, len(rows), size):
        run = rows[i:i + size]
        losses = [r["loss"] for r in run if isinstance(r.get("loss"), (int, float))]
        out.append({**run[-1], "loss": sum(losses) / len(losses) if losses else None})
    return out


def step_curves_figure(
    logs: dict[int, list[dict[str, Any]]], cfg: StudyConfig, max_points: int = STEP_POINTS
) -> go.Figure | None:
    """Training loss, learning rate and the validation metric against the step, one colour per
    trial (``logs``: trial number to its ``metrics_rows``); None when nothing was logged.

    The loss and learning-rate axes are logarithmic: the trials of a search differ by orders of
    magnitude in learning rate, and a diverging trial's loss would flatten everyone else's.
    """
    key = f"val_{cfg.metric}"
    panels = (("loss", "training loss"), ("lr", "learning rate"), (key, f"validation {cfg.metric}"))
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[title for _, title in panels])
    drawn: dict[str, list[float]] = {field: [] for field, _ in panels}
    for i, (number, rows) in enumerate(logs.items()):
        steps = _thin([r for r in rows if "loss" in r], max_points)
        evals = [r for r in rows if r.get("eval")]
        name, shown = f"trial {number}", False
        for row, (field, _) in enumerate(panels, start=1):
            pts = [(r["step"], r[field]) for r in (evals if field == key else steps)
                   if isinstance(r.get(field), (int, float)) and math.isfinite(r[field])]
            if not pts:
                continue
            drawn[field] += [y for _, y in pts]
            fig.add_trace(go.Scatter(
                x=[x for x, _ in pts], y=[y for _, y in pts], name=name, legendgroup=name,
                mode="lines+markers" if field == key else "lines", showlegend=not shown,
                line={"color": PALETTE[i % len(PALETTE)], "width": 1.5}, marker={"size": 5},
                hovertemplate=f"{name}<br>step %{{x}}<br>{field} %{{y:.4g}}<extra></extra>",
            ), row=row, col=1)
            shown = True
    if not fig.data:
        return None
    for row, (field, _) in enumerate(panels[:2], start=1):
        if drawn[field] and min(drawn[field]) > 0:
            fig.update_yaxes(type="log", **log_ticks(min(drawn[field]), max(drawn[field])),
                             row=row, col=1)
    fig.update_xaxes(title_text="step", row=3, col=1)
    return titled(fig, "Step by step, from each trial's metrics.jsonl", height=720)


def per_type_curves_figure(rows: list[dict[str, Any]], number: int) -> go.Figure | None:
    """Each entity type's validation F1 at every evaluation of one trial: a type that is learnt
    late, or never, shows here long before the micro F1 gives it away."""
    evals = [r for r in rows if r.get("eval")]
    types = sorted({k[len("val_f1:"):] for r in evals for k in r if k.startswith("val_f1:")})
    fig = go.Figure()
    for i, typ in enumerate(types):
        pts = [(r["step"], r[f"val_f1:{typ}"]) for r in evals
               if isinstance(r.get(f"val_f1:{typ}"), (int, float))]
        fig.add_trace(go.Scatter(
            x=[p[0] for p in pts], y=[p[1] for p in pts], mode="lines+markers", name=typ,
            line={"color": PALETTE[i % len(PALETTE)]},
            hovertemplate=f"{typ}<br>step %{{x}}<br>F1 %{{y:.4f}}<extra></extra>",
        ))
    micro = [(r["step"], r["val_f1"]) for r in evals if isinstance(r.get("val_f1"), (int, float))]
    if not fig.data:
        return None
    if micro:
        fig.add_trace(go.Scatter(
            x=[p[0] for p in micro], y=[p[1] for p in micro], mode="lines", name="micro F1",
            line={"color": "black", "width": 3, "dash": "dot"},
        ))
    fig.update_layout(xaxis_title="step", yaxis_title="validation F1", legend_title="entity type")
    return titled(fig, f"Per-type validation F1 of trial {number}")


#: Trials in the gradient-norm figure at most: the best completed ones and the latest that
#: failed or were pruned (where a blow-up is most likely to be seen).
HEALTH_TRIALS = (6, 4)


def health_trials(trials: list[FrozenTrial], cfg: StudyConfig) -> list[FrozenTrial]:
    """The few trials whose gradient norms the report draws."""
    done = sorted(completed(trials), key=lambda t: t.value,
                  reverse=cfg.direction == "maximize")[:HEALTH_TRIALS[0]]
    ended = [t for t in trials if t.state in (TrialState.FAIL, TrialState.PRUNED)]
    return done + ended[-HEALTH_TRIALS[1]:]


def grad_norms_figure(logs: dict[int, list[dict[str, Any]]]) -> go.Figure | None:
    """Each trial's global gradient norm at the monitored steps (``monitor_every``), on a log
    axis: a learning rate too high shows as norms climbing by orders of magnitude many steps
    before the loss turns NaN; a vanishing one as norms sinking towards zero."""
    fig = go.Figure()
    for i, (number, rows) in enumerate(logs.items()):
        pts = [(r["step"], r["grad_norm/global"]) for r in rows
               if isinstance(r.get("grad_norm/global"), (int, float))
               and math.isfinite(r["grad_norm/global"]) and r["grad_norm/global"] > 0]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[x for x, _ in pts], y=[y for _, y in pts], mode="lines", name=f"trial {number}",
            line={"color": PALETTE[i % len(PALETTE)], "width": 1.5},
            hovertemplate=f"trial {number}<br>step %{{x}}<br>grad norm %{{y:.4g}}<extra></extra>",
        ))
    if not fig.data:
        return None
    ys = [y for tr in fig.data for y in tr.y]
    fig.update_yaxes(type="log", title_text="global gradient norm", **log_ticks(min(ys), max(ys)))
    fig.update_xaxes(title_text="step")
    return titled(fig, "Gradient norms, from each trial's metrics.jsonl")

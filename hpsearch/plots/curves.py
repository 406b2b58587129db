"""How the search went: the metric per trial, and every trial's validation curve."""

from __future__ import annotations

from typing import Any

import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import StudyConfig
from hpsearch.plots.common import best_of, completed, titled


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

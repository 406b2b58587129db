"""The finalists of a study with ``confirm:``: each one's value at every seed, and its mean.

A single seed's F1 moves by points; the figure shows how far, next to how far apart the
finalists are, so the winner can be read as a real lead or a lucky seed (confirm.py).
"""

from __future__ import annotations

import html

import plotly.graph_objects as go
from optuna.trial import FrozenTrial

from hpsearch.config import StudyConfig
from hpsearch.confirm import Finalist, standings, verdict
from hpsearch.plots.common import params_text, titled


def finalists_figure(table: list[Finalist], cfg: StudyConfig) -> go.Figure | None:
    if not table:
        return None
    fig = go.Figure()
    names = [f"#{f.trial.number}" for f in table]
    for name, f in zip(names, table):
        fig.add_trace(go.Scatter(
            x=[name] * len(f.values), y=f.values, mode="markers", showlegend=False,
            marker={"size": 9, "color": "#1f77b4", "opacity": 0.7},
            text=[f"seed {s}" if s is not None else "search run" for s in f.seeds],
            hovertemplate=f"{name} %{{text}}<br>{cfg.metric} %{{y:.4f}}<extra></extra>",
        ))
    fig.add_trace(go.Scatter(
        x=names, y=[f.mean for f in table], mode="markers", name="mean over seeds",
        marker={"symbol": "line-ew-open", "size": 28, "line": {"width": 3}, "color": "black"},
        error_y={"type": "data", "array": [f.std for f in table], "visible": True},
    ))
    fig.update_layout(xaxis_title="finalist (search trial)", yaxis_title=cfg.metric)
    return titled(fig, "Finalists: every seed's value, the mean and one standard deviation")


def finalists_html(trials: list[FrozenTrial], cfg: StudyConfig) -> str:
    """The finalists' table and the verdict; a line saying why there is none otherwise."""
    if cfg.confirm is None:
        return ('<p class="note">No <code>confirm:</code> in the study file: the best trial '
                "is one seed's result. <code>confirm: {top_k: 3, seeds: 2}</code> trains the "
                "best settings again with other seeds and picks the winner by what holds up."
                "</p>")
    table = standings(trials, cfg)
    if not table:
        return '<p class="note">The finalists are chosen once the search is over.</p>'
    rows = "".join(
        f"<tr><td>{'winner' if i == 0 else i + 1}</td><td>#{f.trial.number}</td>"
        f"<td>{html.escape(params_text(f.trial.params))}</td>"
        f"<td>{f.mean:.4f} ± {f.std:.4f}</td>"
        f"<td>{html.escape(', '.join(f'{v:.4f}' for v in f.values))}</td></tr>"
        for i, f in enumerate(table))
    said = verdict(table)
    head = ("<tr><th>rank</th><th>trial</th><th>params</th><th>mean ± std</th>"
            f"<th>{html.escape(cfg.metric)} per seed</th></tr>")
    return (f'<table class="finalists">{head}{rows}</table>'
            + (f"<p><strong>{html.escape(said)}</strong></p>" if said else ""))

"""The metric over two parameters (learning rate x weight decay by default)."""

from __future__ import annotations

import math

import numpy as np
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from hpsearch.config import FloatParam, StudyConfig
from hpsearch.plots.common import (
    COLORSCALE,
    LANDSCAPE_GRID,
    LANDSCAPE_RADIUS,
    Views,
    completed,
    log_ticks,
    titled,
    varied,
)

#: Said under the landscape's title, so that a blank is read as "not measured", not as a bug.
BLANK_NOTE = "Blank: no completed trial nearby, so nothing to average there."


def landscape_axes(cfg: StudyConfig) -> tuple[str, str] | None:
    """learning_rate x weight_decay when both are searched, else the first two float params."""
    if {"learning_rate", "weight_decay"} <= set(cfg.search_space):
        return "learning_rate", "weight_decay"
    floats = [n for n, p in cfg.search_space.items() if isinstance(p, FloatParam)]
    return (floats[0], floats[1]) if len(floats) >= 2 else None


def _add_landscape(views: Views, trials: list[FrozenTrial], cfg: StudyConfig) -> None:
    axes = landscape_axes(cfg)
    if axes is None:
        views.notes["landscape"] = "The landscape needs two float parameters in the search space."
        return
    views.figures["landscape"], note = landscape_figure(trials, cfg, *axes)
    if note:
        views.notes["landscape"] = note


def landscape_figure(
    trials: list[FrozenTrial], cfg: StudyConfig, x: str, y: str
) -> tuple[go.Figure, str | None]:
    """The metric over two parameters: a smoothed surface of completed trials, and the samples.

    The surface is a Gaussian-kernel average on a fixed grid in (log) parameter space, so its
    cost and size do not grow with the number of trials the way an exact contour does. It stops
    at ``LANDSCAPE_RADIUS`` from the trials: past that it would be an extrapolation drawn with
    the same confidence as a measurement.
    """
    px, py = cfg.search_space[x], cfg.search_space[y]
    xlog, ylog = px.log, py.log
    done = [t for t in completed(trials) if x in t.params and y in t.params]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and x in t.params and y in t.params]
    fig = go.Figure()
    note = None
    surface = False
    xr = _axis_range(px.low, px.high, [t.params[x] for t in done + pruned], xlog)
    yr = _axis_range(py.low, py.high, [t.params[y] for t in done + pruned], ylog)
    values = [t.value for t in done]
    vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
    if len(done) >= 3 and len(varied([x, y], done)) == 2:
        gx, gy, z = smooth_surface(
            [t.params[x] for t in done], [t.params[y] for t in done], values, xr, yr, xlog, ylog
        )
        fig.add_trace(go.Contour(
            x=gx, y=gy, z=z, coloraxis="coloraxis", contours_coloring="heatmap",
            line_width=0.5, ncontours=15, hoverinfo="skip", name="smoothed",
        ))
        surface = True
    else:
        note = "Too few distinct completed trials for a surface: only the samples are shown."
    fig.add_trace(go.Scatter(
        x=[t.params[x] for t in done], y=[t.params[y] for t in done], mode="markers",
        name="completed", text=[f"trial {t.number}" for t in done],
        marker={"color": values, "coloraxis": "coloraxis", "size": 9,
                "line": {"color": "white", "width": 1}},
        hovertemplate=f"%{{text}}<br>{x}=%{{x:.3g}}<br>{y}=%{{y:.3g}}<br>"
                      f"{cfg.metric}=%{{marker.color:.4f}}<extra></extra>",
    ))
    if pruned:
        fig.add_trace(go.Scatter(
            x=[t.params[x] for t in pruned], y=[t.params[y] for t in pruned], mode="markers",
            name="pruned", text=[f"trial {t.number}" for t in pruned],
            marker={"symbol": "x", "color": "#d62728", "size": 7},
            hovertemplate="%{text} (pruned)<br>%{x:.3g}, %{y:.3g}<extra></extra>",
        ))
    fig.update_layout(
        coloraxis={"colorscale": COLORSCALE, "cmin": vmin, "cmax": vmax,
                   "reversescale": cfg.direction == "minimize",
                   "colorbar": {"title": {"text": cfg.metric}}},
        legend={"orientation": "h", "y": -0.18},
    )
    fig.update_xaxes(title_text=x, type="log" if xlog else "linear",
                     range=[math.log10(v) for v in xr] if xlog else xr,
                     **(log_ticks(*xr) if xlog else {}))
    fig.update_yaxes(title_text=y, type="log" if ylog else "linear",
                     range=[math.log10(v) for v in yr] if ylog else yr,
                     **(log_ticks(*yr) if ylog else {}))
    titled(fig, f"{cfg.metric} over {x} x {y}", height=540)
    if surface:
        fig.update_layout(title_subtitle_text=BLANK_NOTE)
    return fig, note


def _axis_range(low: float, high: float, seen: list[float], log: bool) -> list[float]:
    """The search-space bounds, widened to any sample outside them (from an older space)."""
    lo, hi = min([low, *seen]), max([high, *seen])
    if log:
        return [lo, hi]
    pad = (hi - lo) * 0.02
    return [lo - pad, hi + pad]


def smooth_surface(
    xs: list[float], ys: list[float], zs: list[float], xr: list[float], yr: list[float],
    xlog: bool, ylog: bool, grid: int = LANDSCAPE_GRID, radius: float = LANDSCAPE_RADIUS,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nadaraya-Watson average of the metric on a grid x grid mesh, in normalised space.

    Cells farther than ``radius`` (in axis spans) from every sample are NaN, which plotly
    leaves blank: a kernel average has a value everywhere, measured or not.
    """

    def norm(v, r, log):
        v = np.log10(np.asarray(v, float)) if log else np.asarray(v, float)
        lo, hi = (math.log10(r[0]), math.log10(r[1])) if log else (r[0], r[1])
        return (v - lo) / ((hi - lo) or 1.0), lo, hi

    nx, xlo, xhi = norm(xs, xr, xlog)
    ny, ylo, yhi = norm(ys, yr, ylog)
    u = np.linspace(0.0, 1.0, grid)
    gx, gy = np.meshgrid(u, u)
    # Wide enough to bridge gaps between few samples, narrow enough to keep a valley visible.
    h = float(np.clip(0.6 / math.sqrt(len(zs)), 0.04, 0.25))
    d2 = (gx.reshape(-1, 1) - nx) ** 2 + (gy.reshape(-1, 1) - ny) ** 2
    logits = -d2 / (2 * h * h)
    w = np.exp(logits - logits.max(axis=1, keepdims=True))
    z = (w @ np.asarray(zs, float)) / w.sum(axis=1)
    z[d2.min(axis=1) > radius * radius] = np.nan

    def back(lo, hi, log):
        v = lo + u * (hi - lo)
        return 10**v if log else v

    return back(xlo, xhi, xlog), back(ylo, yhi, ylog), z.reshape(grid, grid)

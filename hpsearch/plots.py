"""The study as pictures: plotly figures for a notebook and one offline HTML report.

The report is one file with plotly.js inside it, so it can be mailed, attached to a ticket or
opened on a cluster node with no internet. It reads the study once into memory and draws every
view from that snapshot: the views agree with each other even while workers keep adding trials,
and a 500-trial study on SQLite costs one read instead of one per plot.

Optuna's own plots are used where they already say the right thing (history with the running
best, parallel coordinates, slices, importances). Learning curves and the learning-rate x
weight-decay landscape are drawn here: Optuna's intermediate-values plot does not tell pruned
trials apart, and its contour grid grows with the square of the number of distinct values
(a 365 x 365 grid and 1.6 MB for 500 trials) while leaving the sampled points uncoloured.
"""

from __future__ import annotations

import html
import math
import os
import pickle
import statistics
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import A_REASON, A_RETRY_OF, INTERRUPTED
from hpsearch.config import FloatParam, StudyConfig
from hpsearch.errors import ExportError
from hpsearch.opening import open_study

#: Sections of the report, in page order: (html id, heading).
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("history", "Optimization history"),
    ("learning-curves", "Learning curves"),
    ("landscape", "Landscape"),
    ("parallel", "Parallel coordinates"),
    ("slice", "Slices"),
    ("importances", "Parameter importances"),
    ("trials", "Trials"),
)

#: fANOVA's cost grows with trees x depth x trials; past this many completed trials the
#: importances see an evenly spaced subsample, which the page says.
IMPORTANCE_MAX_TRIALS = 200
IMPORTANCE_MIN_TRIALS = 4
LANDSCAPE_GRID = 60
FIG_HEIGHT = 460
COLORSCALE = "Viridis"


@dataclass
class Views:
    """What the report shows: drawable figures, and for each section what to say instead/too."""

    figures: dict[str, go.Figure] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------- snapshot


def snapshot(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of the study's trials, read from its storage exactly once."""
    return _memory_study(study.study_name, study.direction, study.get_trials(deepcopy=False))


class _Snapshot(optuna.storages.InMemoryStorage):
    """A storage nobody writes to after it is filled: its trials are handed out uncopied.

    Optuna's plots ask for deep copies of every trial, which for 500 trials cost more than
    drawing some of the figures.
    """

    def get_all_trials(self, study_id, deepcopy=True, states=None):
        return super().get_all_trials(study_id, deepcopy=False, states=states)


def _memory_study(
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


def _completed(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    return [t for t in trials if t.state == TrialState.COMPLETE and _finite(t.value)]


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _params(cfg: StudyConfig, trials: list[FrozenTrial]) -> list[str]:
    """The study file's parameters first, then any that only old trials carry."""
    names = list(cfg.search_space)
    extra = sorted({p for t in trials for p in t.params} - set(names))
    return names + extra


def _varied(names: list[str], trials: list[FrozenTrial]) -> list[str]:
    return [p for p in names if len({repr(t.params[p]) for t in trials if p in t.params}) > 1]


# ----------------------------------------------------------------------------- figures


def figures(study: optuna.Study, cfg: StudyConfig) -> dict[str, go.Figure]:
    """Every figure the study's trials allow, keyed by report section; for notebooks."""
    return build_views(snapshot(study), cfg).figures


def build_views(snap: optuna.Study, cfg: StudyConfig) -> Views:
    """Figures and notes of a snapshot; degenerate studies give notes, never exceptions."""
    trials = snap.get_trials(deepcopy=False)
    done = _completed(trials)
    names = _params(cfg, trials)
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
        views.figures["parallel"] = _titled(
            optuna.visualization.plot_parallel_coordinate(
                snap, params=params, target_name=cfg.metric
            ),
            "Parallel coordinates of completed trials",
        )
        views.figures["slice"] = _titled(
            optuna.visualization.plot_slice(snap, params=params, target_name=cfg.metric),
            "Metric against each parameter",
        )
        if aside is None or not aside.collect(views):
            _add_importances(views, snap, done, names, cfg)
    return views


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


def _titled(fig: go.Figure, title: str, height: int = FIG_HEIGHT) -> go.Figure:
    fig.update_layout(title={"text": title}, height=height, template="plotly_white")
    return fig


def history_figure(snap: optuna.Study, cfg: StudyConfig) -> go.Figure:
    fig = optuna.visualization.plot_optimization_history(snap, target_name=cfg.metric)
    return _titled(fig, f"{cfg.metric} per trial and the best so far")


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
    done = _completed(trials)
    if done:
        best = _best(done, cfg)
        if best.intermediate_values:
            steps = sorted(best.intermediate_values)
            fig.add_trace(go.Scatter(
                x=steps, y=[best.intermediate_values[s] for s in steps], mode="lines+markers",
                name=f"best (trial {best.number})", line={"color": "black", "width": 3},
            ))
    fig.update_layout(xaxis_title="step", yaxis_title=cfg.metric, legend_title="trial state")
    return _titled(fig, f"Validation {cfg.metric} during training")


def _best(done: list[FrozenTrial], cfg: StudyConfig) -> FrozenTrial:
    pick = max if cfg.direction == "maximize" else min
    return pick(done, key=lambda t: t.value)


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
    cost and size do not grow with the number of trials the way an exact contour does.
    """
    px, py = cfg.search_space[x], cfg.search_space[y]
    xlog, ylog = px.log, py.log
    done = [t for t in _completed(trials) if x in t.params and y in t.params]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and x in t.params and y in t.params]
    fig = go.Figure()
    note = None
    xr = _axis_range(px.low, px.high, [t.params[x] for t in done + pruned], xlog)
    yr = _axis_range(py.low, py.high, [t.params[y] for t in done + pruned], ylog)
    values = [t.value for t in done]
    vmin, vmax = (min(values), max(values)) if values else (0.0, 1.0)
    if len(done) >= 3 and len(_varied([x, y], done)) == 2:
        gx, gy, z = smooth_surface(
            [t.params[x] for t in done], [t.params[y] for t in done], values, xr, yr, xlog, ylog
        )
        fig.add_trace(go.Contour(
            x=gx, y=gy, z=z, coloraxis="coloraxis", contours_coloring="heatmap",
            line_width=0.5, ncontours=15, hoverinfo="skip", name="smoothed",
        ))
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
                     range=[math.log10(v) for v in xr] if xlog else xr)
    fig.update_yaxes(title_text=y, type="log" if ylog else "linear",
                     range=[math.log10(v) for v in yr] if ylog else yr)
    return _titled(fig, f"{cfg.metric} over {x} x {y}", height=540), note


def _axis_range(low: float, high: float, seen: list[float], log: bool) -> list[float]:
    """The search-space bounds, widened to any sample outside them (from an older space)."""
    lo, hi = min([low, *seen]), max([high, *seen])
    if log:
        return [lo, hi]
    pad = (hi - lo) * 0.02
    return [lo - pad, hi + pad]


def smooth_surface(
    xs: list[float], ys: list[float], zs: list[float], xr: list[float], yr: list[float],
    xlog: bool, ylog: bool, grid: int = LANDSCAPE_GRID,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nadaraya-Watson average of the metric on a grid x grid mesh, in normalised space."""

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

    def back(lo, hi, log):
        v = lo + u * (hi - lo)
        return 10**v if log else v

    return back(xlo, xhi, xlog), back(ylo, yhi, ylog), z.reshape(grid, grid)


def _add_importances(
    views: Views, snap: optuna.Study, done: list[FrozenTrial], names: list[str],
    cfg: StudyConfig,
) -> None:
    varied = _varied(names, done)
    if len(done) < IMPORTANCE_MIN_TRIALS or len(varied) < 2:
        views.notes["importances"] = (
            f"Importances need at least {IMPORTANCE_MIN_TRIALS} completed trials and 2 varied "
            f"parameters (have {len(done)} completed, {len(varied)} varied)."
        )
        return
    study, note = snap, None
    if len(done) > IMPORTANCE_MAX_TRIALS:
        idx = np.linspace(0, len(done) - 1, IMPORTANCE_MAX_TRIALS).round().astype(int)
        study = _memory_study(snap.study_name, snap.direction, [done[i] for i in sorted(set(idx))])
        note = (f"Computed on {IMPORTANCE_MAX_TRIALS} of {len(done)} completed trials "
                "(evenly spaced by trial number) to keep the report fast.")
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=16, max_depth=8, seed=0)
    try:
        fig = optuna.visualization.plot_param_importances(
            study, evaluator=evaluator, params=varied, target_name=cfg.metric
        )
    except Exception as e:  # fANOVA rejects some degenerate samples (e.g. a constant metric)
        views.notes["importances"] = f"Importances could not be computed: {e}"
        return
    views.figures["importances"] = _titled(fig, f"fANOVA importance for {cfg.metric}", 360)
    if note:
        views.notes["importances"] = note


# ----------------------------------------------------------------------------- html parts


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _duration(t: FrozenTrial, now: datetime) -> float | None:
    if t.datetime_start is None:
        return None
    end = t.datetime_complete or (now if t.state == TrialState.RUNNING else None)
    return None if end is None else (end - t.datetime_start).total_seconds()


def trial_notes(t: FrozenTrial) -> str:
    """Why a trial ended as it did, in the words ``hpsearch status`` uses."""
    parts = []
    reason = t.system_attrs.get(A_REASON) or t.user_attrs.get("fail_reason")
    if reason == INTERRUPTED:
        parts.append("interrupted (continued by a later trial)")
    elif reason:
        parts.append(str(reason))
    if t.user_attrs.get("error"):
        parts.append(str(t.user_attrs["error"])[:300])
    if A_RETRY_OF in t.system_attrs:
        parts.append(f"continues #{t.system_attrs[A_RETRY_OF]}")
    if t.state == TrialState.PRUNED:
        step = t.user_attrs.get("pruned_step", max(t.intermediate_values, default=None))
        parts.append(f"pruned at step {step}" if step is not None else "pruned")
    return "; ".join(parts)


def summary_html(trials: list[FrozenTrial], cfg: StudyConfig, study_name: str) -> str:
    done = _completed(trials)
    now = datetime.now()
    finished = [d for t in trials if t.state.is_finished() and (d := _duration(t, now)) is not None]
    by_state = {s.name.lower(): sum(t.state == s for t in trials) for s in TrialState}
    rows = [
        ("study", study_name),
        ("metric", f"{cfg.metric}, {cfg.direction}"),
        ("backend", cfg.backend.name),
        ("pruner", cfg.pruner.name),
        ("trials", f"{len(trials)} (n_trials {cfg.n_trials})"
                   + "".join(f", {n} {s}" for s, n in by_state.items() if n)),
    ]
    if done:
        best = _best(done, cfg)
        rows.append(("best", f"{cfg.metric} = {best.value:.4f} (trial {best.number})"))
        rows.append(("best params",
                     ", ".join(f"{k} = {_fmt(v)}" for k, v in best.params.items())))
    if finished:
        rows.append(("compute time", f"{fmt_seconds(sum(finished))} over {len(finished)} "
                     "finished trials (sum of trial durations)"))
        rows.append(("per trial", f"mean {fmt_seconds(statistics.fmean(finished))}, median "
                     f"{fmt_seconds(statistics.median(finished))}, max "
                     f"{fmt_seconds(max(finished))}"))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    empty = "" if done else (
        '<p class="empty"><strong>No completed trials yet.</strong> The plots appear once a '
        "trial completes; run the study (<code>hpsearch run</code>) or wait for its workers.</p>"
    )
    return f'<table class="summary">{body}</table>{empty}'


def trial_table_html(trials: list[FrozenTrial], cfg: StudyConfig) -> str:
    """A plain table; a click on a header sorts it (see ``_SORT_JS``)."""
    names = _params(cfg, trials)
    now = datetime.now()
    heads = ["#", "state", cfg.metric, *names, "duration", "notes"]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in heads)
    rows = []
    for t in trials:
        d = _duration(t, now)
        cells = [
            (t.number, str(t.number)),
            (t.state.name, t.state.name.lower()),
            (t.value if _finite(t.value) else "", "" if t.value is None else f"{t.value:.4f}"),
            *((t.params.get(n, ""), _fmt(t.params[n]) if n in t.params else "") for n in names),
            (d if d is not None else "", fmt_seconds(d)),
            (trial_notes(t), trial_notes(t)),
        ]
        tds = "".join(
            f'<td data-v="{html.escape(str(key))}">{html.escape(text)}</td>' for key, text in cells
        )
        rows.append(f'<tr class="{t.state.name.lower()}">{tds}</tr>')
    return (f'<div class="table-wrap"><table id="trial-table" class="trials"><thead><tr>{head}'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


_SORT_JS = """
document.querySelectorAll('table.trials th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], up = th.dataset.dir !== 'asc';
    th.closest('tr').querySelectorAll('th').forEach(function (h) { delete h.dataset.dir; });
    th.dataset.dir = up ? 'asc' : 'desc';
    var key = function (tr) {
      var v = tr.cells[col].dataset.v, n = parseFloat(v);
      return v !== '' && isFinite(v) ? n : v;
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === y) return 0;
      if (x === '') return 1;
      if (y === '') return -1;
      var c = (typeof x === typeof y) ? (x < y ? -1 : 1) : (typeof x === 'number' ? -1 : 1);
      return up ? c : -c;
    }).forEach(function (tr) { body.appendChild(tr); });
  });
});
"""

_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1rem 2rem;
       color: #222; }
nav a { margin-right: 1rem; }
section { margin: 2rem 0; }
.note { background: #fff6e0; border-left: 4px solid #f0a000; padding: .5rem 1rem; }
.empty { background: #fdecea; border-left: 4px solid #d62728; padding: .5rem 1rem; }
table { border-collapse: collapse; }
.summary th { text-align: left; padding: .2rem 1rem .2rem 0; }
.trials th, .trials td { border: 1px solid #ddd; padding: .2rem .5rem; font-size: .9rem; }
.table-wrap { max-height: 80vh; overflow: auto; display: inline-block; }
.trials th { background: #f4f4f4; cursor: pointer; position: sticky; top: 0; }
.trials th[data-dir=asc]::after { content: " \\25B2"; }
.trials th[data-dir=desc]::after { content: " \\25BC"; }
.trials tr.pruned td { color: #a33; }
.trials tr.fail td { color: #b60; }
"""


def _plot_div(key: str, fig: go.Figure) -> str:
    height = fig.layout.height or FIG_HEIGHT
    return fig.to_html(
        full_html=False, include_plotlyjs=False, div_id=f"plot-{key}",
        default_width="100%", default_height=f"{height}px",
        config={"displaylogo": False, "responsive": True},
    )


def render_html(cfg: StudyConfig, study_name: str, trials: list[FrozenTrial], views: Views) -> str:
    """The whole page; plotly.js goes in once, in the head, and only when there is a plot."""
    from plotly.offline import get_plotlyjs

    parts = {
        "summary": summary_html(trials, cfg, study_name),
        "trials": trial_table_html(trials, cfg),
    }
    sections = []
    for sid, heading in SECTIONS:
        body = parts.get(sid, "")
        if sid in views.notes:
            body += f'<p class="note">{html.escape(views.notes[sid])}</p>'
        if sid in views.figures:
            body += f'<div class="plot">{_plot_div(sid, views.figures[sid])}</div>'
        sections.append(f'<section id="{sid}"><h2>{heading}</h2>{body}</section>')
    nav = " ".join(f'<a href="#{sid}">{heading}</a>' for sid, heading in SECTIONS)
    plotly_js = f"<script>{get_plotlyjs()}</script>" if views.figures else ""
    title = html.escape(f"hpsearch report: {study_name}")
    stamp = datetime.now().strftime("%Y-%m-%d %H:%M")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style>{plotly_js}</head><body><h1>{title}</h1>"
        f"<p>Written {stamp} from {len(trials)} trials.</p><nav>{nav}</nav>"
        f"{''.join(sections)}<script>{_SORT_JS}</script></body></html>\n"
    )


# ----------------------------------------------------------------------------- writing


def write_report(
    cfg: StudyConfig, out: Path | None = None, *, png_dir: Path | None = None
) -> Path:
    """Write the HTML report (default ``<output_dir>/report.html``) and optionally PNGs.

    A study without completed trials still gets a report (summary and trial table), not an
    error. The HTML replaces any old report atomically, so a browser reloading it never sees a
    half-written file. PNGs come after the HTML: an :class:`ExportError` leaves the HTML there.
    """
    study = open_study(cfg)
    snap = snapshot(study)
    trials = snap.get_trials(deepcopy=False)
    views = build_views(snap, cfg)
    out = Path(out) if out is not None else cfg.out / "report.html"
    atomic_write_text(out, render_html(cfg, study.study_name, trials, views))
    if png_dir is not None:
        export_png(views.figures, Path(png_dir))
    return out


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def export_png(figs: dict[str, go.Figure], png_dir: Path) -> list[Path]:
    """``<key>.png`` per figure, through kaleido and a local Chrome/Chromium (one session)."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        raise ExportError(
            "PNG export needs kaleido and Chrome/Chromium: pip install kaleido "
            "(and e.g. apt-get install chromium)"
        ) from None
    import plotly.io as pio

    png_dir.mkdir(parents=True, exist_ok=True)
    paths = [png_dir / f"{key}.png" for key in figs]
    if not figs:
        return paths
    try:
        pio.write_images(list(figs.values()), paths, format="png", width=1100)
    except Exception as e:  # kaleido reports a missing browser in several exception types
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ExportError(
            f"PNG export failed: {first} (kaleido draws with a local Chrome/Chromium: install one, "
            "e.g. apt-get install chromium, or set BROWSER_PATH to its executable)"
        ) from e
    return paths

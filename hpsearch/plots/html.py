"""The report page: summary, figures and the trial table in one offline HTML file."""

from __future__ import annotations

import html
import statistics
from datetime import datetime
from typing import Any

import plotly.graph_objects as go
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import A_PROVENANCE, A_REASON, A_RETRY_OF, INTERRUPTED
from hpsearch.config import StudyConfig
from hpsearch.confirm import standings
from hpsearch.plots.common import (
    FIG_HEIGHT,
    Views,
    best_of,
    completed,
    finite,
    fmt_value,
    param_names,
    params_text,
)
from hpsearch.plots.finalists import finalists_html
from hpsearch.provenance import short_commit

#: Sections of the report, in page order: (html id, heading).
SECTIONS: tuple[tuple[str, str], ...] = (
    ("summary", "Summary"),
    ("finalists", "Finalists"),
    ("history", "Optimization history"),
    ("learning-curves", "Learning curves"),
    ("gradient-norms", "Gradient norms"),
    ("landscape", "Landscape"),
    ("parallel", "Parallel coordinates"),
    ("slice", "Slices"),
    ("importances", "Parameter importances"),
    ("trials", "Trials"),
)


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
.per-type { margin-top: 1rem; }
.per-type caption { text-align: left; font-weight: bold; padding-bottom: .3rem; }
.per-type th, .per-type td { padding: .2rem 1rem .2rem 0; text-align: right; }
.per-type th:first-child, .per-type td:first-child { text-align: left; }
"""


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


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return ""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"




def _duration(t: FrozenTrial, now: datetime) -> float | None:
    if t.datetime_start is None:
        return None
    end = t.datetime_complete or (now if t.state == TrialState.RUNNING else None)
    return None if end is None else (end - t.datetime_start).total_seconds()


def per_type_scores(t: FrozenTrial) -> dict[str, dict[str, float]]:
    """The trial's per-entity-type scores at its best evaluation, by type name; empty for a
    trial that never finished one (or an old one recorded without them)."""
    scores = t.user_attrs.get("best_scores")
    per = scores.get("per_type") if isinstance(scores, dict) else None
    if not isinstance(per, dict):
        return {}
    return {str(k): v for k, v in sorted(per.items())
            if isinstance(v, dict) and finite(v.get("f1-score"))}


def per_type_text(per: dict[str, dict[str, float]]) -> str:
    return " ".join(f"{k} {m['f1-score']:.2f}" for k, m in per.items())


def per_type_html(t: FrozenTrial) -> str:
    """The best trial per entity type: a micro F1 can hide one type the model never finds."""
    per = per_type_scores(t)
    if not per:
        return ""

    def num(m: dict, key: str, spec: str) -> str:
        return format(m[key], spec) if finite(m.get(key)) else ""

    rows = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{num(m, 'precision', '.4f')}</td>"
        f"<td>{num(m, 'recall', '.4f')}</td><td>{num(m, 'f1-score', '.4f')}</td>"
        f"<td>{num(m, 'support', '.0f')}</td></tr>"
        for k, m in per.items()
    )
    return (f'<table class="per-type"><caption>Best trial (#{t.number}) per entity type'
            "</caption><thead><tr><th>type</th><th>precision</th><th>recall</th><th>F1</th>"
            f"<th>support</th></tr></thead><tbody>{rows}</tbody></table>")


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
    if t.user_attrs.get("enqueued"):
        parts.append(f"enqueued ({t.user_attrs['enqueued']})")
    if t.state == TrialState.PRUNED:
        step = t.user_attrs.get("pruned_step", max(t.intermediate_values, default=None))
        parts.append(f"pruned at step {step}" if step is not None else "pruned")
    return "; ".join(parts)


def summary_html(trials: list[FrozenTrial], cfg: StudyConfig, study_name: str) -> str:
    done = completed(trials)
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
    table = standings(trials, cfg)
    if table:  # confirm: the winning finalist's best seed, and what its seeds say
        win = table[0]
        best = win.best_run(cfg.direction == "maximize")
        rows.append(("best", f"{cfg.metric} = {best.value:.4f} (trial {best.number}; finalist "
                     f"#{win.trial.number}: {win.mean:.4f} ± {win.std:.4f} over "
                     f"{len(win.values)} seeds)"))
    elif done:
        best = best_of(done, cfg)
        rows.append(("best", f"{cfg.metric} = {best.value:.4f} (trial {best.number})"))
    if table or done:
        rows.append(("best params", params_text(best.params)))
    if finished:
        rows.append(("compute time", f"{fmt_seconds(sum(finished))} over {len(finished)} "
                     "finished trials (sum of trial durations)"))
        rows.append(("per trial", f"mean {fmt_seconds(statistics.fmean(finished))}, median "
                     f"{fmt_seconds(statistics.median(finished))}, max "
                     f"{fmt_seconds(max(finished))}"))
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    per_type = per_type_html(best_of(done, cfg)) if done else ""
    empty = "" if done else (
        '<p class="empty"><strong>No completed trials yet.</strong> The plots appear once a '
        "trial completes; run the study (<code>hpsearch run</code>) or wait for its workers.</p>"
    )
    return f'<table class="summary">{body}</table>{per_type}{empty}'


PER_TYPE_HEAD = "F1 per type"

PER_TYPE_TITLE = "F1 of each entity type at the trial's best evaluation; sorts by the weakest"


PROVENANCE_HEAD = "provenance"

PROVENANCE_TITLE = ("data fingerprint, model hash and hpsearch version@commit the trial ran "
                    "with; hover a cell for the rest (hpsearch status --trial N prints it all)")


def provenance_cell(prov: Any) -> tuple[str, str, str]:
    """(sort key, text, tooltip): the short hashes that tell two trials' inputs apart at a
    glance, and the whole record on hover. Sorting groups trials by their data."""
    if not isinstance(prov, dict):
        return "", "", ""
    data = str(prov.get("data_fingerprint") or "?")[:8]
    model = str(prov.get("model_hash") or "?")[:8]
    text = f"data {data} · model {model} · {short_commit(prov)}"
    tip = "\n".join(f"{k}: {'-' if v is None else v}" for k, v in prov.items())
    return f"{data} {model}", text, tip  # never a number: hex like 1e5 would sort as one


def trial_table_html(trials: list[FrozenTrial], cfg: StudyConfig) -> str:
    """A plain table; a click on a header sorts it (see ``_SORT_JS``)."""
    names = param_names(cfg, trials)
    now = datetime.now()
    pers = [per_type_scores(t) for t in trials]
    by_type = any(pers)  # a study from before per-type scores were kept gets no empty column
    provs = [t.user_attrs.get(A_PROVENANCE) for t in trials]
    by_prov = any(isinstance(p, dict) for p in provs)  # a study from before provenance: none
    heads = ["#", "state", cfg.metric, *[PER_TYPE_HEAD] * by_type, *names, "duration",
             *[PROVENANCE_HEAD] * by_prov, "notes"]
    tips = {3: PER_TYPE_TITLE} if by_type else {}
    if by_prov:
        tips[len(heads) - 2] = PROVENANCE_TITLE
    head = "".join(
        (f'<th title="{html.escape(tips[i])}">' if i in tips else "<th>") + f"{html.escape(h)}</th>"
        for i, h in enumerate(heads)
    )
    rows = []
    for t, per, prov in zip(trials, pers, provs):
        d = _duration(t, now)
        cells = [
            (t.number, str(t.number)),
            (t.state.name, t.state.name.lower()),
            (t.value if finite(t.value) else "", "" if t.value is None else f"{t.value:.4f}"),
            # sorts by the weakest type: the trials that miss one type entirely come together
            *[(min((m["f1-score"] for m in per.values()), default=""), per_type_text(per))]
            * by_type,
            *((t.params.get(n, ""), fmt_value(t.params[n]) if n in t.params else "")
              for n in names),
            (d if d is not None else "", fmt_seconds(d)),
            *[provenance_cell(prov)] * by_prov,
            (trial_notes(t), trial_notes(t)),
        ]
        tds = "".join(
            f'<td data-v="{html.escape(str(c[0]))}"'
            + (f' title="{html.escape(c[2])}"' if len(c) > 2 else "")
            + f">{html.escape(c[1])}</td>"
            for c in cells
        )
        rows.append(f'<tr class="{t.state.name.lower()}">{tds}</tr>')
    return (f'<div class="table-wrap"><table id="trial-table" class="trials"><thead><tr>{head}'
            f"</tr></thead><tbody>{''.join(rows)}</tbody></table></div>")


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
        "finalists": finalists_html(trials, cfg),
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

"""Commands that read a study: status, best, evaluate, plot, dashboard, tensorboard, and
demo-data, which writes the data a first study reads."""

from __future__ import annotations

import json
from pathlib import Path

import click

from hpsearch.cli.common import errors, fmt_params
from hpsearch.config import load_study
from hpsearch.errors import ConfigError

#: Hosts only this machine can reach; any other exposes a dashboard that has no login.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--trial", "number", type=click.IntRange(min=0), default=None, metavar="N",
              help="Show trial N alone: its parameters, state, value and provenance.")
@errors
def status(study_file: str, number: int | None) -> None:
    """A table of the study's trials and the best one (--trial N: one trial in full)."""
    from hpsearch.opening import open_study
    from hpsearch.study import summarize

    cfg = load_study(study_file)
    st = open_study(cfg)
    trials = st.get_trials(deepcopy=False)
    if number is not None:
        _trial_status(cfg, trials, number)
        return
    names = list(cfg.search_space)
    click.echo(f"{'#':>4}  {'state':<9} {cfg.metric:>8}  {'time':>7}  "
               + "  ".join(f"{n:>13}" for n in names) + "  note")
    for t in trials:
        value = "" if t.value is None else f"{t.value:.4f}"
        secs = "" if t.duration is None else f"{t.duration.total_seconds():.1f}s"
        vals = "  ".join(f"{_fmt_value(t.params.get(n)):>13}" for n in names)
        click.echo(f"{t.number:>4}  {t.state.name:<9} {value:>8}  {secs:>7}  {vals}  "
                   f"{_status_note(t)}")
    s = summarize(st, cfg, [], [])
    click.echo(f"{s.total}/{cfg.n_trials} trials counted")
    if s.best_value is not None:
        click.echo(f"best #{s.best_number}: {cfg.metric}={s.best_value:.4f}  "
                   f"{fmt_params(s.best_params)}")
    for line in _finalist_lines(cfg, trials):
        click.echo(line)
    from hpsearch.slurm import status_lines  # a submitted study: its jobs and their tasks

    for line in status_lines(cfg, trials):
        click.echo(line)


def _finalist_lines(cfg, trials) -> list[str]:
    """With confirm: each finalist's mean ± std over its seeds and their values, the verdict."""
    from hpsearch.confirm import standings, verdict

    table = standings(trials, cfg)
    if not table:
        return []
    lines = [f"finalists ({cfg.confirm.select} over seeds decides):"]
    for i, f in enumerate(table):
        lines.append(f"  {'winner' if i == 0 else f'{i + 1:>6}'}  #{f.trial.number:<4} "
                     f"{cfg.metric}={f.mean:.4f} ± {f.std:.4f}  seeds: "
                     + ", ".join(f"{v:.4f}" for v in f.values)
                     + f"  {fmt_params(f.trial.params)}")
    said = verdict(table)
    if said:
        lines.append(f"  {said}")
    return lines


def _status_note(t) -> str:
    from optuna.trial import TrialState

    from hpsearch.attrs import A_CONFIRMS, A_REASON, A_RETRY_OF, A_SEED, A_SLURM_JOB
    from hpsearch.recovery import is_dead

    note = t.system_attrs.get(A_REASON) or ""
    if A_SLURM_JOB in t.system_attrs:
        note = f"[slurm {t.system_attrs[A_SLURM_JOB]}] {note}".strip()
    if t.user_attrs.get("error"):
        note = f"{note}: {t.user_attrs['error']}"
    if A_RETRY_OF in t.system_attrs:
        note = f"continues #{t.system_attrs[A_RETRY_OF]} {note}".strip()
    if A_CONFIRMS in t.system_attrs:
        note = (f"confirms #{t.system_attrs[A_CONFIRMS]} (seed {t.system_attrs.get(A_SEED)}) "
                f"{note}").strip()
    if t.user_attrs.get("enqueued"):
        note = f"enqueued ({t.user_attrs['enqueued']}) {note}".strip()
    if t.state == TrialState.RUNNING and is_dead(t):
        note = f"(process gone; resumes on the next run) {note}".strip()
    return note


def _trial_status(cfg, trials: list, number: int) -> None:
    """One trial, one ``key: value`` a line, so that grep and diff between trials work."""
    from hpsearch.attrs import A_PROVENANCE

    t = next((t for t in trials if t.number == number), None)
    if t is None:
        have = f"trials 0 to {len(trials) - 1}" if trials else "no trials yet"
        raise ConfigError(f"study '{cfg.name}' has no trial {number} ({have})")
    lines: list[tuple[str, object]] = [
        ("trial", t.number), ("state", t.state.name), (cfg.metric, t.value),
        ("duration", None if t.duration is None else f"{t.duration.total_seconds():.1f}s"),
        *t.params.items(),
    ]
    if note := _status_note(t):
        lines.append(("note", note))
    prov = t.user_attrs.get(A_PROVENANCE)
    lines += list(prov.items()) if isinstance(prov, dict) else [("provenance", "not recorded")]
    for k, v in lines:
        click.echo(f"{k}: {'-' if v is None else v}")


def _fmt_value(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)



@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@errors
def best(study_file: str, as_json: bool) -> None:
    """The best trial's parameters and score."""
    from hpsearch.confirm import standings, verdict
    from hpsearch.opening import open_study
    from hpsearch.study import summarize

    cfg = load_study(study_file)
    study = open_study(cfg)
    s = summarize(study, cfg, [], [])
    if s.best_value is None:
        raise ConfigError(f"study '{cfg.name}' has no completed trial yet")
    trials = study.get_trials(deepcopy=False)
    if as_json:
        out = {"number": s.best_number, "value": s.best_value, "metric": cfg.metric,
               "params": s.best_params}
        table = standings(trials, cfg)
        if table:
            out["finalists"] = [
                {"number": f.trial.number, "params": f.trial.params, "mean": f.mean,
                 "std": f.std, "values": f.values, "seeds": f.seeds} for f in table]
            out["select"] = cfg.confirm.select
            out["verdict"] = verdict(table)
        click.echo(json.dumps(out))
        return
    click.echo(f"best trial #{s.best_number}: {cfg.metric}={s.best_value:.4f}")
    for k, v in s.best_params.items():
        click.echo(f"  {k}: {v}")
    for line in _finalist_lines(cfg, trials):
        click.echo(line)



@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]),
              help="The data split to score.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False),
              help="An exported model folder (default: the study's best-model).")
@click.option("--mode", type=click.Choice(["default", "strict"]), default=None,
              help="seqeval's scoring; strict: strict IOB2 (default: the study's seqeval_mode).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@errors
def evaluate(study_file: str, split: str, model_dir: str | None, mode: str | None,
             as_json: bool) -> None:
    """Score the best trial's model on the test split: P/R/F1 and a per-type report."""
    from hpsearch.evaluate import evaluate_folder
    from hpsearch.trainer.metrics import format_report

    cfg = load_study(study_file)
    folder = Path(model_dir) if model_dir else cfg.out / "best-model"
    scores = evaluate_folder(cfg, folder, split, mode)
    if as_json:
        click.echo(json.dumps(scores))
        return
    click.echo(f"{split}: precision={scores['precision']:.4f} recall={scores['recall']:.4f} "
               f"f1={scores['f1']:.4f} macro_f1={scores['macro_f1']:.4f} "
               f"weighted_f1={scores['weighted_f1']:.4f} accuracy={scores['accuracy']:.4f}")
    click.echo(format_report(scores))


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False),
              help="The HTML file (default: <output_dir>/report.html).")
@click.option("--png", "png_dir", type=click.Path(file_okay=False),
              help="Also write each figure as a PNG into this folder.")
@click.option("--open", "open_browser", is_flag=True, help="Open the report in a browser.")
@errors
def plot(study_file: str, out: str | None, png_dir: str | None, open_browser: bool) -> None:
    """Write the study's HTML report: history, learning curves, landscape, importances."""
    from hpsearch.plots import write_report

    cfg = load_study(study_file)
    path = write_report(cfg, Path(out) if out else None,
                        png_dir=Path(png_dir) if png_dir else None)
    click.echo(f"report: {path}")
    if png_dir:
        click.echo(f"figures: {png_dir}")
    if open_browser:
        import webbrowser

        webbrowser.open(path.resolve().as_uri())


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The dashboard has no login: listen beyond this "
              "machine only on a network you trust.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@errors
def dashboard(study_file: str, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study's database (safe while workers run)."""
    from hpsearch.dashboard import serve_dashboard

    cfg = load_study(study_file)
    if host not in LOOPBACK:
        click.echo(f"warning: --host {host}: the dashboard has no login; anyone who can reach "
                   f"{host}:{port} can read, change and delete the study", err=True)
    serve_dashboard(cfg, host=host, port=port)


@click.command("tensorboard")
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--port", default=6006, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (on 127.0.0.1).")
@errors
def tensorboard_cmd(study_file: str, port: int) -> None:
    """Serve TensorBoard on the study's trial curves and HParams (report_to: [tensorboard])."""
    from hpsearch.reporting.tensorboard import serve

    serve(load_study(study_file, check_paths=False), port)


@click.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of the generated sentences.")
def demo_data(out_dir: str, seed: int) -> None:
    """Write the synthetic demo NER data set (BERT-NER layout) to OUT_DIR."""
    from hpsearch.demo_data import generate_demo_data

    click.echo(generate_demo_data(out_dir, seed=seed))


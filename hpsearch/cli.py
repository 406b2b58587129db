"""`hpsearch` on the command line: a thin layer over the library a notebook can call too.

Every expected problem (a bad study file, bad data, a missing study) is one line on stderr (a
study file with several mistakes: one line each) and exit code 2; a Ctrl-C that checkpointed the
running trial exits 130.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import sys
from pathlib import Path

import click

from hpsearch.config import load_study, with_overrides
from hpsearch.errors import ConfigError, DiskFull, StudyInterrupted, UserError, root_cause

EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

#: `-h` as well as `--help`, on the group and, inherited, on every command.
CONTEXT = {"help_option_names": ["-h", "--help"]}

#: Hosts only this machine can reach; any other exposes a dashboard that has no login.
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def _errors(fn):
    """Turn known errors into one line and exit 2, instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*a, **kw):
        try:
            return fn(*a, **kw)
        except KeyboardInterrupt:  # a second Ctrl-C: out now, the trial stays to be resumed
            click.echo("interrupted: stopped at once; run again to resume from the last "
                       "checkpoint", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception as e:
            if _is_outage(e):
                click.echo(f"error: {_outage_line(e)}", err=True)
                sys.exit(EXIT_FAILED)
            if isinstance(e, UserError):
                for line in getattr(e, "lines", None) or [str(e)]:
                    click.echo(f"error: {line}", err=True)
                sys.exit(EXIT_USAGE)
            if isinstance(e, DiskFull):
                click.echo(f"error: {e}", err=True)
                sys.exit(EXIT_FAILED)
            if isinstance(e, StudyInterrupted):
                click.echo(f"interrupted: {e}", err=True)
                sys.exit(EXIT_INTERRUPTED)
            raise

    return wrapper


def _is_outage(e: BaseException) -> bool:
    storage = sys.modules.get("hpsearch.storage")
    return storage is not None and storage.is_outage(e)


def _outage_line(e: BaseException) -> str:
    """The database's own complaint, first line only: it names host and port, not passwords."""
    root = root_cause(e)
    first = (str(root).strip().splitlines() or [type(root).__name__])[0]
    first = re.sub(r"(password=)\S+", r"\1***", first)
    return f"the study database cannot be reached: {first}"


def _fmt_params(params: dict) -> str:
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


@click.group(context_settings=CONTEXT)
@click.version_option(package_name="hpsearch")
def main() -> None:
    """Hyperparameter search for token-classification (NER) trainers."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run_options(fn):
    """What starting a study and joining one share: the file, the overrides, the pool."""
    for opt in reversed([
        click.argument("study_file", type=click.Path(dir_okay=False)),
        click.option("--allow-changes", is_flag=True,
                     help="Continue although study.yaml changed."),
        click.option("--workers", type=click.IntRange(min=1), default=None,
                     help="Worker processes on this machine; each trial runs in its own process."),
        click.option("--gpus", default=None, metavar="0,1,...",
                     help="Pin workers to these GPUs (CUDA_VISIBLE_DEVICES), round robin."),
        click.option("--trials-per-gpu", type=click.IntRange(min=1), default=1,
                     show_default=True, help="Workers per GPU listed in --gpus (small models)."),
        click.option("--gpus-per-trial", type=click.IntRange(min=1), default=None,
                     metavar="G", help="GPUs that train one trial together (DDP, "
                     "trainer.devices_per_trial): --gpus 0,1,2,3 --gpus-per-trial 2 runs two "
                     "2-GPU trials at a time."),
        click.option("--fuse", type=click.IntRange(min=1, max=64), default=None, metavar="K",
                     help="Train K trials at a time as one batched model (trainer.fuse)."),
        click.option("--n-trials", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Total trials for this run, in place of the file's n_trials "
                     "(trials already in the study count)."),
    ]):
        fn = opt(fn)
    return fn


@main.command()
@_run_options
@_errors
def run(study_file: str, allow_changes: bool, workers: int | None, gpus: str | None,
        trials_per_gpu: int, gpus_per_trial: int | None, fuse: int | None,
        n_trials: int | None) -> None:
    """Run (or continue) the study until it has n_trials trials in total."""
    _run(study_file, allow_changes, workers, gpus, trials_per_gpu, fuse, n_trials, join=False,
         gpus_per_trial=gpus_per_trial)


# After a crash users reach for `resume`; it is `run`, which always continues where it stopped.
resume = copy.copy(run)
resume.name = "resume"
resume.help = ("The same as run: continue the study (interrupted trials resume from their last "
               "checkpoint) until it has n_trials trials in total.")
main.add_command(resume)


@main.command()
@_run_options
@_errors
def worker(study_file: str, allow_changes: bool, workers: int | None, gpus: str | None,
           trials_per_gpu: int, gpus_per_trial: int | None, fuse: int | None,
           n_trials: int | None) -> None:
    """Join a study that exists (from this or another machine) and run its trials."""
    _run(study_file, allow_changes, workers or (None if gpus else 1), gpus, trials_per_gpu,
         fuse, n_trials, join=True, gpus_per_trial=gpus_per_trial)


def _with_devices_per_trial(cfg, study_file: str, n: int, gpus: str | None):
    """``--gpus-per-trial N``: the study's ``trainer.devices_per_trial``, checked like the
    file's (a fused study refuses it in one line)."""
    from pydantic import ValidationError

    from hpsearch.config import StudyConfig
    from hpsearch.config.loading import config_error, validation_problems

    if gpus is None:
        raise ConfigError("--gpus-per-trial needs --gpus (on a CPU, set "
                          "trainer.devices_per_trial in the study file)")
    data = cfg.model_dump(mode="json", exclude_unset=True)
    data.setdefault("trainer", {})["devices_per_trial"] = n
    try:
        return StudyConfig.model_validate(data)
    except ValidationError as e:
        raise config_error(f"{study_file}: --gpus-per-trial {n}",
                           validation_problems(e)) from None


def _run(study_file: str, allow_changes: bool, workers: int | None, gpus: str | None,
         trials_per_gpu: int, fuse: int | None, n_trials: int | None, join: bool,
         gpus_per_trial: int | None = None) -> None:
    from hpsearch import study as driver
    from hpsearch.storage import redact

    cfg = with_overrides(load_study(study_file), study_file, n_trials=n_trials, fuse=fuse)
    if gpus_per_trial is not None:
        cfg = _with_devices_per_trial(cfg, study_file, gpus_per_trial, gpus)
    gpu_list = None
    if gpus is not None:
        gpu_list = [g.strip() for g in gpus.split(",")]
        if not all(gpu_list):
            raise ConfigError(f"--gpus {gpus!r}: expected GPU ids separated by commas, e.g. 0,1")
    elif trials_per_gpu != 1:
        raise ConfigError("--trials-per-gpu needs --gpus")
    if gpu_list and len(gpu_list) % cfg.trainer.devices_per_trial:
        raise ConfigError(f"--gpus {gpus}: {len(gpu_list)} GPU(s) do not split into trials of "
                          f"{cfg.trainer.devices_per_trial} (trainer.devices_per_trial, "
                          "--gpus-per-trial)")
    if gpu_list and cfg.trainer.device.startswith("cuda:"):
        raise ConfigError(f"{study_file}: trainer.device {cfg.trainer.device} with --gpus: each "
                          "worker sees only its own GPU; use device auto or cuda")
    pooled = join or workers is not None or gpu_list is not None
    slots: list = []
    if pooled:
        from hpsearch.workers import gpu_slots

        slots = gpu_slots(gpu_list or [], workers, trials_per_gpu,
                          cfg.trainer.devices_per_trial if gpu_list else 1)
    where = ""
    if slots:
        where = f", {len(slots)} worker(s)" + (f" on GPUs {','.join(gpu_list)}" if gpu_list else "")
    if cfg.trainer.fuse > 1:
        where += f", fused {cfg.trainer.fuse} at a time"
    if cfg.trainer.devices_per_trial > 1:
        where += f", {cfg.trainer.devices_per_trial} devices a trial"
    click.echo(f"study {cfg.name}: {cfg.n_trials} trials, backend {cfg.backend.name}, "
               f"pruner {cfg.pruner.name}, storage {redact(cfg.storage_url)}{where}")

    def on_trial(o, study) -> None:
        value = "-" if o.value is None else f"{o.value:.4f}"
        reason = f" ({o.reason})" if o.reason else ""
        if o.resumed_from_step is not None:
            reason += f" (resumed from step {o.resumed_from_step})"
        best = driver.summarize(study, cfg, [], [])
        best_txt = "" if best.best_value is None else (
            f"  best {best.best_value:.4f} (#{best.best_number})"
        )
        who = f"  [{o.worker}]" if o.worker else ""
        click.echo(f"trial {o.number:>3}  {_fmt_params(o.params)}  {cfg.metric}={value}  "
                   f"{o.state.name}{reason}  {o.seconds:.1f}s{best_txt}{who}")

    def on_recovered(numbers: list[int]) -> None:  # before the trials that continue them
        click.echo(f"resumed interrupted trial(s): {', '.join(map(str, numbers))}")

    if pooled:
        from hpsearch.workers import run_pool

        s = run_pool(cfg, slots, allow_changes=allow_changes, join=join, on_trial=on_trial,
                     on_note=lambda msg: click.echo(msg, err=True), on_recovered=on_recovered)
    else:
        s = driver.run(cfg, allow_changes=allow_changes, on_trial=on_trial,
                       on_recovered=on_recovered)
    if not s.ran:
        click.echo(f"nothing to do: {s.total}/{s.n_trials} trials already in the study")
    click.echo(f"{s.total}/{s.n_trials} trials")
    if s.best_value is not None:
        click.echo(f"best trial #{s.best_number}: {cfg.metric}={s.best_value:.4f}  "
                   f"{_fmt_params(s.best_params)}")
        click.echo(f"best model: {cfg.out / 'best-model'}")


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--trial", "number", type=click.IntRange(min=0), default=None, metavar="N",
              help="Show trial N alone: its parameters, state, value and provenance.")
@_errors
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
                   f"{_fmt_params(s.best_params)}")
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
                     + f"  {_fmt_params(f.trial.params)}")
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


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--slurm", is_flag=True, help="Submit to Slurm (the one scheduler so far).")
@click.option("--array", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="N", help="Array tasks: N workers, each one `hpsearch worker`.")
@click.option("--gpus-per-task", type=click.IntRange(min=1), default=None, metavar="G",
              help="GPUs per task; Slurm sets CUDA_VISIBLE_DEVICES and the worker keeps it.")
@click.option("--cpus-per-task", type=click.IntRange(min=1), default=None, metavar="C",
              help="CPUs per task (also the task's OMP_NUM_THREADS unless set).")
@click.option("--mem", default=None, metavar="SIZE", help="Memory per task, e.g. 16G.")
@click.option("--time", "time_limit", default=None, metavar="LIMIT",
              help="Time limit per task, e.g. 4:00:00; trials checkpoint before it.")
@click.option("--partition", default=None, help="Slurm partition (sbatch --partition).")
@click.option("--account", default=None, help="Slurm account (sbatch --account).")
@click.option("--qos", default=None, help="Slurm quality of service (sbatch --qos).")
@click.option("--sbatch-arg", "sbatch_args", multiple=True, metavar="OPTION",
              help="Any other sbatch option, e.g. --sbatch-arg=--constraint=a100 (repeat).")
@click.option("--grace", type=click.IntRange(min=10), default=120, show_default=True,
              metavar="SECONDS", help="TERM this long before the time limit: the trials "
              "checkpoint and the task requeues itself.")
@click.option("--n-trials", type=click.IntRange(min=1), default=None, metavar="N",
              help="Total trials, in place of the file's n_trials.")
@click.option("--fuse", type=click.IntRange(min=1, max=64), default=None, metavar="K",
              help="Each worker trains K trials at a time as one model.")
@click.option("--allow-changes", is_flag=True, help="Continue although study.yaml changed.")
@click.option("--no-submit", is_flag=True,
              help="Create the study and write the script, but leave the sbatch to you.")
@_errors
def submit(study_file: str, slurm: bool, array: int, gpus_per_task: int | None,
           cpus_per_task: int | None, mem: str | None, time_limit: str | None,
           partition: str | None, account: str | None, qos: str | None,
           sbatch_args: tuple[str, ...], grace: int, n_trials: int | None, fuse: int | None,
           allow_changes: bool, no_submit: bool) -> None:
    """Run the study as a cluster job array, one worker a task (see README: On a Slurm cluster)."""
    from hpsearch import slurm as sl
    from hpsearch.storage import redact
    from hpsearch.study import start_study

    if not slurm:
        raise ConfigError("submit needs a scheduler: --slurm (the only one so far)")
    cfg = with_overrides(load_study(study_file), study_file, n_trials=n_trials, fuse=fuse)
    warnings = sl.check_storage(cfg, array)
    if not no_submit:
        sl.require("sbatch")
    worker_args = [*(["--n-trials", str(n_trials)] if n_trials else []),
                   *(["--fuse", str(fuse)] if fuse else []),
                   *(["--allow-changes"] if allow_changes else [])]
    req = sl.Request(array, gpus_per_task, cpus_per_task, mem, time_limit, partition, account,
                     qos, sbatch_args, grace, worker_args)
    text = sl.batch_script(cfg, Path(study_file), req)  # its mistakes before the study exists
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    start_study(cfg, allow_changes=allow_changes)
    script = sl.write_script(cfg, text)
    click.echo(f"study {cfg.name}: {cfg.n_trials} trials, storage {redact(cfg.storage_url)}, "
               f"{array} Slurm array task(s)")
    click.echo(f"script: {script}")
    if no_submit:
        click.echo(f"submit it with: sbatch {script}")
        return
    job = sl.sbatch(script)
    sl.remember(cfg, job, req, script)
    click.echo(f"submitted: job {job}; logs {sl.slurm_dir(cfg)}/{job}_*.out")
    click.echo(f"watch: hpsearch status {study_file}; stop: hpsearch cancel {study_file}")


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=120, show_default=True,
              metavar="SECONDS", help="How long the trials may take to checkpoint.")
@_errors
def cancel(study_file: str, wait_s: float) -> None:
    """Cancel the study's Slurm jobs, after their running trials checkpoint."""
    from hpsearch import slurm as sl

    cfg = load_study(study_file, check_paths=False)
    if not sl.read_jobs(cfg):
        raise ConfigError(f"study '{cfg.name}' has no Slurm jobs in {sl.jobs_file(cfg)} "
                          "(hpsearch submit ... --slurm)")
    done = sl.cancel(cfg, wait_s, lambda msg: click.echo(msg))
    if not done:
        click.echo("no job of this study is in the queue")
        return
    click.echo(f"cancelled: job(s) {', '.join(done)}; `hpsearch run` or `hpsearch submit` "
               "resumes the checkpointed trials")


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_errors
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


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, required=True,
              help="A searched parameter's value, e.g. learning_rate=5e-5 (repeat for more).")
@_errors
def enqueue(study_file: str, sets: tuple[str, ...]) -> None:
    """Queue a point to evaluate before the sampler proposes any; it counts toward n_trials."""
    from hpsearch.config.study import check_point
    from hpsearch.study import enqueue as enqueue_points
    from hpsearch.study import start_study

    cfg = load_study(study_file)
    point = _parse_set(sets)
    try:
        check_point(point, cfg.search_space, "--set")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    added = enqueue_points(start_study(cfg), cfg, [point], "hpsearch enqueue")
    click.echo(f"{'queued' if added else 'already in the study'}: {_fmt_params(point)}")


def _parse_set(items: tuple[str, ...]) -> dict:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, help="A trainer field, e.g. learning_rate=3e-5.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder of the run.")
@_errors
def train(study_file: str, sets: tuple[str, ...], out: str | None) -> None:
    """Train once with given parameters, outside the search, with the same trainer."""
    from pydantic import ValidationError

    from hpsearch.config import config_error, validation_problems
    from hpsearch.export import export_model
    from hpsearch.opening import data_dir
    from hpsearch.trainer import prepare
    from hpsearch.trainer import train as train_fn
    from hpsearch.trainer.metrics import format_report
    from hpsearch.trainer.trial_dir import best_weights
    from hpsearch.trial import use_compile_cache

    cfg = load_study(study_file)
    params = _parse_set(sets)
    try:
        tcfg = cfg.trainer_for(params)
    except ValidationError as e:
        raise config_error("--set", validation_problems(e)) from None
    stamp = "-".join(f"{k}={v}" for k, v in params.items()) or "defaults"
    out_dir = Path(out) if out else cfg.out / "manual" / stamp
    prep = prepare(tcfg, data_dir(cfg), cfg.out / "cache")
    use_compile_cache(cfg)
    r = train_fn(tcfg, prep, out_dir, metric=cfg.metric, maximize=cfg.direction == "maximize")
    click.echo(f"best {cfg.metric}={r.value:.4f} at step {r.best_step} of {r.steps} "
               f"({r.train_seconds:.1f}s, {r.tokens_per_second:,.0f} tokens/s)")
    click.echo(format_report(r.best_scores))
    model = export_model(tcfg, prep, best_weights(out_dir), out_dir / "model",
                         {"params": params, "value": r.value, "metric": cfg.metric})
    click.echo(f"outputs: {out_dir}")
    click.echo(f"model: {model} (hpsearch evaluate {study_file} --model {model})")


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--split", default="test", show_default=True, type=click.Choice(["val", "test"]),
              help="The data split to score.")
@click.option("--model", "model_dir", type=click.Path(file_okay=False),
              help="An exported model folder (default: the study's best-model).")
@click.option("--mode", type=click.Choice(["default", "strict"]), default=None,
              help="seqeval's scoring; strict: strict IOB2 (default: the study's seqeval_mode).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@_errors
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


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(dir_okay=False),
              help="The HTML file (default: <output_dir>/report.html).")
@click.option("--png", "png_dir", type=click.Path(file_okay=False),
              help="Also write each figure as a PNG into this folder.")
@click.option("--open", "open_browser", is_flag=True, help="Open the report in a browser.")
@_errors
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


@main.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. The dashboard has no login: listen beyond this "
              "machine only on a network you trust.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@_errors
def dashboard(study_file: str, host: str, port: int) -> None:
    """Serve optuna-dashboard on the study's database (safe while workers run)."""
    from hpsearch.dashboard import serve_dashboard

    cfg = load_study(study_file)
    if host not in LOOPBACK:
        click.echo(f"warning: --host {host}: the dashboard has no login; anyone who can reach "
                   f"{host}:{port} can read, change and delete the study", err=True)
    serve_dashboard(cfg, host=host, port=port)


@main.command("tensorboard")
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--port", default=6006, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (on 127.0.0.1).")
@_errors
def tensorboard_cmd(study_file: str, port: int) -> None:
    """Serve TensorBoard on the study's trial curves and HParams (report_to: [tensorboard])."""
    from hpsearch.reporting.tensorboard import serve

    serve(load_study(study_file, check_paths=False), port)


@main.command("demo-data")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--seed", default=0, show_default=True, help="Seed of the generated sentences.")
def demo_data(out_dir: str, seed: int) -> None:
    """Write the synthetic demo NER data set (BERT-NER layout) to OUT_DIR."""
    from hpsearch.demo_data import generate_demo_data

    click.echo(generate_demo_data(out_dir, seed=seed))


if __name__ == "__main__":
    main()

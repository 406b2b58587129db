"""Commands that train: run (and its alias resume), worker, train, enqueue."""

from __future__ import annotations

import copy
from pathlib import Path

import click

from hpsearch.cli.common import errors, fmt_params, parse_set, with_devices_per_trial
from hpsearch.config import load_study, with_overrides
from hpsearch.errors import ConfigError


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


@click.command()
@_run_options
@errors
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


@click.command()
@_run_options
@errors
def worker(study_file: str, allow_changes: bool, workers: int | None, gpus: str | None,
           trials_per_gpu: int, gpus_per_trial: int | None, fuse: int | None,
           n_trials: int | None) -> None:
    """Join a study that exists (from this or another machine) and run its trials."""
    _run(study_file, allow_changes, workers or (None if gpus else 1), gpus, trials_per_gpu,
         fuse, n_trials, join=True, gpus_per_trial=gpus_per_trial)


def _run(study_file: str, allow_changes: bool, workers: int | None, gpus: str | None,
         trials_per_gpu: int, fuse: int | None, n_trials: int | None, join: bool,
         gpus_per_trial: int | None = None) -> None:
    from hpsearch import study as driver
    from hpsearch.storage import redact

    cfg = with_overrides(load_study(study_file), study_file, n_trials=n_trials, fuse=fuse)
    if gpus_per_trial is not None:
        if gpus is None:
            raise ConfigError("--gpus-per-trial needs --gpus (on a CPU, set "
                              "trainer.devices_per_trial in the study file)")
        cfg = with_devices_per_trial(cfg, study_file, gpus_per_trial)
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
        click.echo(f"trial {o.number:>3}  {fmt_params(o.params)}  {cfg.metric}={value}  "
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
                   f"{fmt_params(s.best_params)}")
        click.echo(f"best model: {cfg.out / 'best-model'}")



@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, required=True,
              help="A searched parameter's value, e.g. learning_rate=5e-5 (repeat for more).")
@errors
def enqueue(study_file: str, sets: tuple[str, ...]) -> None:
    """Queue a point to evaluate before the sampler proposes any; it counts toward n_trials."""
    from hpsearch.config.study import check_point
    from hpsearch.study import enqueue as enqueue_points
    from hpsearch.study import start_study

    cfg = load_study(study_file)
    point = parse_set(sets)
    try:
        check_point(point, cfg.search_space, "--set")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    added = enqueue_points(start_study(cfg), cfg, [point], "hpsearch enqueue")
    click.echo(f"{'queued' if added else 'already in the study'}: {fmt_params(point)}")



@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, help="A trainer field, e.g. learning_rate=3e-5.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder of the run.")
@errors
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
    params = parse_set(sets)
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


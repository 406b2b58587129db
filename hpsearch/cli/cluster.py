"""Commands for a cluster's scheduler: submit a study as a job array, cancel its jobs."""

from __future__ import annotations

from pathlib import Path

import click

from hpsearch.cli.common import errors, with_devices_per_trial
from hpsearch.config import load_study, with_overrides
from hpsearch.errors import ConfigError


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--slurm", is_flag=True, help="Submit to Slurm (the one scheduler so far).")
@click.option("--array", type=click.IntRange(min=1), default=1, show_default=True,
              metavar="N", help="Array tasks: N workers, each one `hpsearch worker`.")
@click.option("--gpus-per-task", type=click.IntRange(min=1), default=None, metavar="G",
              help="GPUs per task; Slurm sets CUDA_VISIBLE_DEVICES and the worker keeps it.")
@click.option("--gpus-per-trial", type=click.IntRange(min=1), default=None, metavar="N",
              help="GPUs that train one trial together (DDP; default: the file's "
              "trainer.devices_per_trial): a task's G GPUs train G/N trials at a time.")
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
@errors
def submit(study_file: str, slurm: bool, array: int, gpus_per_task: int | None,
           gpus_per_trial: int | None, cpus_per_task: int | None, mem: str | None,
           time_limit: str | None, partition: str | None, account: str | None, qos: str | None,
           sbatch_args: tuple[str, ...], grace: int, n_trials: int | None, fuse: int | None,
           allow_changes: bool, no_submit: bool) -> None:
    """Run the study as a cluster job array, one worker a task (see README: On a Slurm cluster)."""
    from hpsearch import slurm as sl
    from hpsearch.storage import redact
    from hpsearch.study import start_study

    if not slurm:
        raise ConfigError("submit needs a scheduler: --slurm (the only one so far)")
    cfg = with_overrides(load_study(study_file), study_file, n_trials=n_trials, fuse=fuse)
    if gpus_per_trial is None and gpus_per_task and cfg.trainer.devices_per_trial > 1:
        gpus_per_trial = cfg.trainer.devices_per_trial  # the file's: every GPU of a task in use
    if gpus_per_trial is not None:
        if gpus_per_task is None or gpus_per_task % gpus_per_trial:
            raise ConfigError(f"--gpus-per-trial {gpus_per_trial}: needs --gpus-per-task, a "
                              f"multiple of it (each task's GPUs, {gpus_per_trial} a trial)")
        cfg = with_devices_per_trial(cfg, study_file, gpus_per_trial)
    warnings = sl.check_storage(cfg, array)
    if not no_submit:
        sl.require("sbatch")
    worker_args = [*(["--n-trials", str(n_trials)] if n_trials else []),
                   *(["--fuse", str(fuse)] if fuse else []),
                   *(["--allow-changes"] if allow_changes else [])]
    req = sl.Request(array, gpus_per_task, cpus_per_task, mem, time_limit, partition, account,
                     qos, sbatch_args, grace, worker_args, gpus_per_trial)
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


@click.command()
@click.argument("study_file", type=click.Path(dir_okay=False))
@click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=120, show_default=True,
              metavar="SECONDS", help="How long the trials may take to checkpoint.")
@errors
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


"""A study scaled out through the cluster's own scheduler: one Slurm job array, a worker a task.

On a cluster, GPUs are not ours to pick: Slurm hands them out, may stop a job at its time
limit or to make room for another, and restarts it later. So ``hpsearch submit STUDY.yaml
--slurm --array N`` creates the study, writes a batch script a user can read, edit and
``sbatch`` again by hand, and submits it; each of its N tasks runs ``hpsearch worker`` on
whatever Slurm gave it (Slurm sets CUDA_VISIBLE_DEVICES, the worker keeps it). Everything the
workers share goes through the study's storage, so that storage must be one every node
reaches: PostgreSQL, or a journal file on a shared file system. SQLite's locks do not hold
across machines, so a multi-task array on SQLite is refused before anything is written.

Being stopped is routine here, not a failure. The script asks Slurm for TERM some seconds
before the time limit (``--signal=B:TERM@grace``), passes it to the worker, whose running
trials checkpoint and stop (exit 130, as after a Ctrl-C), and then requeues its own task;
when the task comes back its trials continue from their checkpoints. Slurm's own stops
(``scancel``, ``scontrol requeue``, a preemption, the time limit itself) send TERM to every
process of the job at once, which the workers take as one request (workers.py), and a task
killed outright leaves RUNNING trials that any other task recovers (recovery.py). The script
requeues itself only while the job is still RUNNING: a job Slurm is already ending was
cancelled or is being requeued by Slurm, and a requeue then would bring a cancelled job back.
``hpsearch cancel`` turns requeueing off before it asks the trials to checkpoint, for the same
reason.

The submitted job ids are kept in ``<output_dir>/slurm/jobs.json``, so that ``status`` and
``cancel`` find them from the study file alone.
"""

from __future__ import annotations

import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hpsearch.attrs import A_SLURM_JOB, A_SLURM_RESTARTS
from hpsearch.config import StudyConfig
from hpsearch.errors import ConfigError, UserError
from hpsearch.storage import file_lock, local_file, redact

DEFAULT_GRACE = 120  # seconds between the time-limit warning and the end: a checkpoint's time
SCRIPT, JOBS = "worker.sbatch", "jobs.json"
#: File systems that live on one machine: a journal there is not seen by other nodes.
LOCAL_FS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "f2fs",
                      "vfat", "ramfs"})
#: Array task states in which its worker may still be running (and may need to checkpoint).
ACTIVE = frozenset({"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "SIGNALING",
                    "CONFIGURING", "RESIZING", "REQUEUED"})


class SlurmError(UserError):
    """A Slurm command refused or is missing; its own message, one line."""


def slurm_dir(cfg: StudyConfig) -> Path:
    return cfg.out / "slurm"


# ----------------------------------------------------------------------------- a trial's task


def trial_attrs(env: Mapping[str, str] = os.environ) -> dict[str, object]:
    """The Slurm job and array task a trial runs in, for its system attributes ({} outside).

    ``JOB_TASK`` for an array task (what squeue, scontrol and scancel take), the job id
    otherwise; the restart count once Slurm requeued the task.
    """
    job = env.get("SLURM_JOB_ID")
    if not job:
        return {}
    array, task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    attrs: dict[str, object] = {A_SLURM_JOB: f"{array}_{task}" if array and task else job}
    restarts = env.get("SLURM_RESTART_COUNT", "")
    if restarts.isdigit() and int(restarts):
        attrs[A_SLURM_RESTARTS] = int(restarts)
    return attrs


# ----------------------------------------------------------------------------- submitting


@dataclass
class Request:
    """What ``hpsearch submit`` asks Slurm for, and what each task's worker is told."""

    array: int = 1
    gpus_per_task: int | None = None
    cpus_per_task: int | None = None
    mem: str | None = None
    time_limit: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    sbatch_args: Sequence[str] = ()
    grace: int = DEFAULT_GRACE
    worker_args: Sequence[str] = field(default_factory=list)  # --n-trials, --fuse, ...
    gpus_per_trial: int | None = None  # the task's GPUs trained on by trials this many each


def check_storage(cfg: StudyConfig, array: int) -> list[str]:
    """Refuse a storage the array's tasks cannot share; warnings for what may not be shared.

    Tasks land on whichever nodes are free. SQLite on a network file system loses its locks
    (and with them ``n_trials`` and the study itself), so more than one task needs PostgreSQL
    or a journal file. Whether a path is seen by every node cannot be asked, but a path on a
    local file system certainly is not.
    """
    url = cfg.storage_url
    if url.startswith("sqlite:") and local_file(url) is None:
        raise ConfigError(f"storage {url}: a study in memory dies with its process; batch "
                          "jobs need a storage that outlives it")
    if url.startswith("sqlite:") and array > 1:
        raise ConfigError(
            f"storage {redact(url)}: SQLite cannot be shared by {array} Slurm array tasks, "
            "which may run on different nodes (its locks do not hold over a network file "
            "system); use storage: journal:PATH on a file system every node sees, or "
            "postgresql+psycopg://..."
        )
    if array == 1:
        return []
    local = [f"{path} ({fs})" for path in (local_file(url), cfg.out)
             if path is not None and (fs := _fs_type(path)) in LOCAL_FS]
    if not local:
        return []
    return [f"{' and '.join(local)} on a local file system: array tasks on other nodes cannot "
            "see it (fine if they all run on this node; a cluster needs a shared file system)"]


def _fs_type(path: Path) -> str | None:
    """The type of the file system ``path`` is (or would be) on, from /proc/mounts."""
    try:
        mounts = Path("/proc/mounts").read_text().splitlines()
    except OSError:
        return None
    target = Path(os.path.realpath(path))
    best, kind = "", None
    for line in mounts:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        if (target == Path(point) or Path(point) in target.parents) and len(point) >= len(best):
            best, kind = point, parts[2]
    return kind


def hpsearch_command() -> list[str]:
    """This interpreter with this hpsearch: a cluster's nodes see the same software paths."""
    return [sys.executable, "-m", "hpsearch"]


def batch_script(cfg: StudyConfig, study_file: Path, req: Request) -> str:
    """The batch script: Slurm's options on top, then one worker that checkpoints when told."""
    logs = slurm_dir(cfg).resolve()
    options = [
        f"--job-name=hpsearch-{cfg.name}",
        f"--array=0-{req.array - 1}",
        "--ntasks=1",
        f"--output={logs / '%A_%a.out'}",
        "--open-mode=append",  # a requeued task writes on in the same log
        f"--chdir={Path.cwd()}",  # the study file's relative paths are the submitter's
        "--requeue",
        f"--signal=B:TERM@{req.grace}",
    ]
    for flag, value in (("gpus-per-task", req.gpus_per_task),
                        ("cpus-per-task", req.cpus_per_task), ("mem", req.mem),
                        ("time", req.time_limit), ("partition", req.partition),
                        ("account", req.account), ("qos", req.qos)):
        if value is not None:
            options.append(f"--{flag}={value}")
    for arg in req.sbatch_args:
        if not arg.startswith("-") or "\n" in arg:
            raise ConfigError(f"--sbatch-arg {arg!r}: expected one sbatch option, e.g. "
                              "--constraint=a100")
        options.append(arg)
    worker = shlex.join([*hpsearch_command(), "worker", str(study_file.resolve()),
                         *req.worker_args])
    if req.gpus_per_trial:  # the GPUs are known when the task starts: Slurm sets them
        worker += (' --gpus "${CUDA_VISIBLE_DEVICES:?Slurm gave this task no GPUs}"'
                   f" --gpus-per-trial {req.gpus_per_trial}")
    head = "\n".join(f"#SBATCH {o}" for o in options)
    return f"""#!/bin/bash
# Study '{cfg.name}' as a Slurm job array, written by `hpsearch submit`: each task is one
# hpsearch worker. Edit it and submit it again by hand if you like:
#   sbatch {shlex.quote(str(logs / SCRIPT))}
{head}

task="${{SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}}${{SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}}"
echo "$(date '+%F %T') task $task on $(hostname), restart ${{SLURM_RESTART_COUNT:-0}}, \\
GPUs ${{CUDA_VISIBLE_DEVICES:-none}}"
export OMP_NUM_THREADS="${{OMP_NUM_THREADS:-${{SLURM_CPUS_PER_TASK:-1}}}}"

# Slurm sends TERM to this shell {req.grace} s before the time limit (--signal=B:TERM@...):
# the trap passes it on to the worker, whose running trials write a checkpoint and stop.
warned=0
trap 'warned=1; kill -TERM "$worker" 2>/dev/null' TERM
{worker} &
worker=$!
# `wait` returns early whenever the trap runs: wait until the worker has really exited.
while kill -0 "$worker" 2>/dev/null; do wait "$worker"; done
wait "$worker"
status=$?
echo "$(date '+%F %T') worker exited with status $status"

# 130: it stopped with trials left to run. After the warning the task goes back into the
# queue, and its trials continue from their checkpoints when it returns; the trials of a
# task that died without one are continued by the other tasks. Only while the job is still
# RUNNING: after a scancel or an `scontrol requeue` Slurm is already ending (or requeueing)
# it. `hpsearch cancel` turns requeueing off (Requeue=0) before it asks for checkpoints.
job=$(scontrol -o show job "$task" 2>/dev/null)
if [ "$warned" = 1 ] && [ "$status" = 130 ] && [[ $job == *" JobState=RUNNING "* ]] \\
    && [[ $job == *" Requeue=1 "* ]]; then
  echo "$(date '+%F %T') requeueing $task"
  scontrol requeue "$task" && exit 0
fi
exit "$status"
"""


def write_script(cfg: StudyConfig, text: str) -> Path:
    path = slurm_dir(cfg) / SCRIPT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o755)
    os.replace(tmp, path)
    return path


def sbatch(script: Path) -> str:
    """Submit ``script``; the job id. SLURM_CONF and the rest come from our environment."""
    out = _slurm(["sbatch", "--parsable", str(script)])
    job = out.strip().split(";")[0]
    if not job.isdigit():
        raise SlurmError(f"sbatch answered {out.strip()!r}, not a job id")
    return job


def require(tool: str = "sbatch") -> None:
    if shutil.which(tool) is None:
        raise SlurmError(f"{tool} not found: run this on a Slurm login node (or put Slurm's "
                         "commands on PATH)")


def _slurm(cmd: list[str], *, check: bool = True, timeout: float = 60) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} not found: is this a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{cmd[0]} did not answer in {timeout:.0f} s") from None
    if check and r.returncode != 0:
        said = " ".join((r.stderr or r.stdout).split()) or f"exit code {r.returncode}"
        raise SlurmError(f"{shlex.join(cmd)}: {said}")
    return r.stdout


# ----------------------------------------------------------------------------- remembering


def jobs_file(cfg: StudyConfig) -> Path:
    return slurm_dir(cfg) / JOBS


def read_jobs(cfg: StudyConfig) -> list[dict]:
    try:
        return json.loads(jobs_file(cfg).read_text(encoding="utf-8"))["jobs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _update_jobs(cfg: StudyConfig, change: Callable[[list[dict]], None]) -> None:
    """Read, change and write jobs.json under a lock, replacing it atomically: a reader never
    sees half a file, and two submits at once both stay in it."""
    path = jobs_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(JOBS + ".lock")):
        jobs = read_jobs(cfg)
        change(jobs)
        tmp = path.with_name(f"{JOBS}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"study": cfg.name, "jobs": jobs}, indent=1) + "\n",
                       encoding="utf-8")
        os.replace(tmp, path)


def remember(cfg: StudyConfig, job: str, req: Request, script: Path) -> None:
    entry = {"job": job, "tasks": req.array, "script": str(script.resolve()),
             "submitted": _now()}
    _update_jobs(cfg, lambda jobs: jobs.append(entry))


def _now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- watching


@dataclass
class Task:
    id: str  # JOB_TASK
    state: str
    where: str  # its node, or why it is pending


def tasks_of(job: str) -> list[Task] | None:
    """The job's array tasks as squeue (else sacct) knows them; None: neither knows it."""
    if shutil.which("squeue"):
        out = _slurm(["squeue", "-h", "-r", "-t", "all", "-j", job, "-o", "%i|%T|%N|%r"],
                     check=False)
        rows = [line.split("|") for line in out.splitlines() if line.count("|") == 3]
        if rows:
            return [Task(i, state, node or (f"({why})" if why not in ("", "None") else ""))
                    for i, state, node, why in rows]
    if shutil.which("sacct"):
        out = _slurm(["sacct", "-n", "-X", "-P", "-j", job, "-o", "JobID,State,NodeList"],
                     check=False)
        rows = [line.split("|") for line in out.splitlines() if line.count("|") == 2]
        if rows:
            return [Task(*row) for row in rows]
    return None


def status_lines(cfg: StudyConfig, trials: Sequence) -> list[str]:
    """For a submitted study: each job and its tasks' states, with the trials each runs."""
    jobs = read_jobs(cfg)
    if not jobs:
        return []
    if not (shutil.which("squeue") or shutil.which("sacct")):
        return [f"slurm job {j['job']}: squeue not found here" for j in jobs]
    running: dict[str, list[int]] = {}
    for t in trials:
        if t.state.name == "RUNNING" and A_SLURM_JOB in t.system_attrs:
            running.setdefault(str(t.system_attrs[A_SLURM_JOB]), []).append(t.number)
    lines = []
    for j in jobs:
        head = f"slurm job {j['job']} ({j['tasks']} task{'s' * (j['tasks'] != 1)}, " \
               f"submitted {j['submitted'].replace('T', ' ')}" \
               + (", cancelled" if j.get("cancelled") else "") + ")"
        tasks = tasks_of(j["job"])
        if tasks is None:
            lines.append(f"{head}: no longer in the queue")
            continue
        lines.append(f"{head}:")
        for t in tasks:
            on = f" {t.where}" if t.where else ""
            trials_txt = ", ".join(f"#{n}" for n in running.get(t.id, []))
            lines.append(f"  {t.id:<12} {t.state:<11}{on}"
                         + (f"  trial {trials_txt}" if trials_txt else ""))
    return lines


# ----------------------------------------------------------------------------- cancelling


def cancel(cfg: StudyConfig, wait: float, note: Callable[[str], None]) -> list[str]:
    """Cancel the study's jobs, their running trials checkpointed first; the jobs cancelled.

    In order: no more requeueing (a task told to stop would otherwise requeue itself), the
    pending tasks cancelled (they have nothing to save), TERM to each running task's batch
    shell (which passes it to its worker), up to ``wait`` seconds for the workers to exit,
    then ``scancel`` for whatever is left.
    """
    require("scancel")
    live = [j["job"] for j in read_jobs(cfg)
            if any(t.state in ACTIVE | {"PENDING"} for t in tasks_of(j["job"]) or [])]
    if not live:
        return []
    for job in live:
        _slurm(["scontrol", "update", f"JobId={job}", "Requeue=0"], check=False)
        _slurm(["scancel", "--state=PENDING", job], check=False)
        _slurm(["scancel", "--batch", "--signal=TERM", job], check=False)
    note(f"asked the running trials of job(s) {', '.join(live)} to checkpoint; "
         f"waiting up to {wait:.0f} s")
    deadline = time.time() + wait
    while time.time() < deadline:
        if not any(t.state in ACTIVE for job in live for t in tasks_of(job) or []):
            break
        time.sleep(1.0)
    for job in live:
        _slurm(["scancel", job], check=False)
    stamp = _now()

    def mark(jobs: list[dict]) -> None:
        for j in jobs:
            if j["job"] in live:
                j["cancelled"] = stamp

    _update_jobs(cfg, mark)
    return live

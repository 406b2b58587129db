"""`hpsearch submit --slurm` on a real one-node Slurm cluster (tests/slurm_cluster.py).

What is promised: an array of workers runs exactly ``n_trials``, each trial knows its job and
task; a task stopped by Slurm (``scontrol requeue``, the time-limit warning) checkpoints,
comes back and finishes its trial with the F1 of an uninterrupted run; a task killed outright
leaves its trial to the other tasks; ``hpsearch cancel`` checkpoints before it cancels.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from conftest import REPO, cli, hpsearch, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.trainer.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

# A trial of a few seconds with a checkpoint every 5 steps, so that a signal catches it midway.
SLOW = {"train_limit": 400, "max_tokens": 256, "max_epochs": 6, "checkpoint_every": 5}
DONE = {"COMPLETED", "FAILED", "CANCELLED"}


@pytest.fixture(scope="module")
def cluster():
    """One real Slurm controller and node for this module (see tests/slurm_cluster.py)."""
    import slurm_cluster

    try:
        c = slurm_cluster.start_cluster()
    except slurm_cluster.Unavailable as e:
        msg = f"SLURM TESTS SKIPPED: {e}"
        warnings.warn(msg, stacklevel=1)
        print(f"\n{'!' * 80}\n{msg}\n{'!' * 80}", file=sys.__stderr__)
        pytest.skip(msg)
    yield c
    c.stop()


def _submit(cluster, path: Path, *args: str) -> str:
    r = hpsearch("submit", str(path), "--slurm", *args, env=cluster.env)
    assert r.returncode == 0, r.stderr
    return re.search(r"submitted: job (\d+)", r.stdout).group(1)


def _step(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[1])


def _wait_for_checkpoint(cluster, job: str, trial_dir: Path, min_step: int = 10,
                         timeout: float = 120) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        ckpts = list_checkpoints(trial_dir / "checkpoints")
        if ckpts and _step(ckpts[-1]) >= min_step:
            return _step(ckpts[-1])
        assert not set(cluster.tasks(job).values()) & DONE, _logs(trial_dir)
        time.sleep(0.02)
    raise AssertionError(f"no checkpoint in {trial_dir}\n{_logs(trial_dir)}")


def _logs(trial_dir: Path) -> str:
    """The tasks' logs of the study whose trial folder (or trials folder) this is."""
    out = next(p for p in trial_dir.parents if p.name == "out")
    return "\n".join(p.read_text() for p in sorted((out / "slurm").glob("*.out")))


def _back_in_queue(cluster, task: str) -> None:
    """Start a requeued task in seconds rather than at its BeginTime, two minutes on.

    Not at once: the node refuses a task whose credential was revoked (at its requeue) in the
    same second as the new one was issued, and the task then fails for good.
    """
    cluster.wait_for(task, {"PENDING"}, timeout=90)
    time.sleep(2)
    cluster.run("scontrol", "update", f"JobId={task}", "StartTime=now")


def _reference(path: Path, params: dict, out: Path) -> subprocess.Popen:
    """The same parameters trained without interruption, in the background meanwhile."""
    args = [a for k, v in params.items() for a in ("--set", f"{k}={v!r}")]
    return subprocess.Popen([sys.executable, "-m", "hpsearch", "train", str(path), *args,
                             "--out", str(out)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _reference_f1(proc: subprocess.Popen, out: Path) -> float:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return max(x["val_f1"] for x in rows if x.get("eval"))


def test_submit_refuses_sqlite_for_an_array_and_a_broken_study_writing_nothing(tmp_path,
                                                                               demo_dir):
    sqlite = write_study(tmp_path, demo_dir)  # the default storage: sqlite under output_dir
    r = cli("submit", str(sqlite), "--slurm", "--array", "2")
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: storage sqlite:///")
    assert "SQLite cannot be shared by 2 Slurm array tasks" in r.stderr and "journal" in r.stderr

    broken = write_study(tmp_path, demo_dir, file="broken.yaml", n_trail=3,
                         storage=f"journal:{tmp_path / 'j.log'}")
    r = cli("submit", str(broken), "--slurm", "--array", "2")
    assert r.exit_code == 2
    assert r.stderr == f"error: {broken}: n_trail: unknown key; did you mean n_trials?\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.yaml", "study.yaml"]


def test_no_submit_writes_a_script_that_asks_for_what_was_given(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, storage=f"journal:{tmp_path / 'j.log'}")
    r = cli("submit", str(path), "--slurm", "--no-submit", "--array", "4",
            "--gpus-per-task", "1", "--cpus-per-task", "8", "--mem", "32G", "--time",
            "4:00:00", "--partition", "gpu", "--account", "lab", "--qos", "high",
            "--sbatch-arg=--constraint=a100", "--grace", "300", "--fuse", "2",
            "--n-trials", "6")
    assert r.exit_code == 0, r.stderr
    script = tmp_path / "out" / "slurm" / "worker.sbatch"
    assert f"sbatch {script}" in r.stdout
    text = script.read_text()
    heads = [line.removeprefix("#SBATCH ") for line in text.splitlines()
             if line.startswith("#SBATCH ")]
    assert heads[1:] == [
        "--array=0-3", "--ntasks=1", f"--output={script.parent}/%A_%a.out",
        "--open-mode=append", f"--chdir={REPO}", "--requeue", "--signal=B:TERM@300",
        "--gpus-per-task=1", "--cpus-per-task=8", "--mem=32G", "--time=4:00:00",
        "--partition=gpu", "--account=lab", "--qos=high", "--constraint=a100"]
    assert f"-m hpsearch worker {path} --n-trials 6 --fuse 2 &" in text
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert not (script.parent / "jobs.json").exists()  # nothing was submitted
    assert trials_of(path) == []  # the study exists, for the workers to join


def test_gpus_per_trial_splits_each_tasks_gpus_into_trials_of_that_many(tmp_path, demo_dir):
    """Four GPUs a task, two a trial: the task's worker is told the GPUs Slurm set (known only
    when it starts) and runs two 2-GPU trials at a time; the study file's devices_per_trial is
    the default."""
    path = write_study(tmp_path, demo_dir, storage=f"journal:{tmp_path / 'j.log'}")
    r = cli("submit", str(path), "--slurm", "--no-submit", "--array", "2",
            "--gpus-per-task", "4", "--gpus-per-trial", "2")
    assert r.exit_code == 0, r.stderr
    text = (tmp_path / "out" / "slurm" / "worker.sbatch").read_text()
    assert "#SBATCH --gpus-per-task=4" in text
    (line,) = [x for x in text.splitlines() if " worker " in x and x.endswith(" &")]
    # What bash hands the worker, with the GPUs Slurm would set for the task.
    argv = subprocess.run(["bash", "-c", f"set -- {line.removesuffix(' &')}; "
                           'printf "%s\\n" "$@"'], capture_output=True, text=True,
                          env={"CUDA_VISIBLE_DEVICES": "4,5,6,7", "PATH": "/usr/bin:/bin"})
    assert argv.returncode == 0, argv.stderr
    assert argv.stdout.splitlines()[-6:] == ["worker", str(path.resolve()), "--gpus",
                                             "4,5,6,7", "--gpus-per-trial", "2"]
    # Without GPUs the task stops in one line instead of training on the wrong devices.
    bare = subprocess.run(["bash", "-c", f"set -- {line.removesuffix(' &')}"],
                          capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert bare.returncode != 0 and "Slurm gave this task no GPUs" in bare.stderr

    in_file = write_study(tmp_path, demo_dir, file="ddp.yaml", name="ddp",
                          storage=f"journal:{tmp_path / 'j2.log'}",
                          trainer={"devices_per_trial": 2}, output_dir=str(tmp_path / "ddp"))
    r = cli("submit", str(in_file), "--slurm", "--no-submit", "--gpus-per-task", "2")
    assert r.exit_code == 0, r.stderr
    assert "--gpus-per-trial 2" in (tmp_path / "ddp" / "slurm" / "worker.sbatch").read_text()


@pytest.mark.parametrize("args, needle", [
    (["--gpus-per-trial", "2"], "--gpus-per-trial 2: needs --gpus-per-task"),
    (["--gpus-per-task", "4", "--gpus-per-trial", "3"], "--gpus-per-trial 3: needs --gpus-per-"),
    (["--gpus-per-task", "4", "--gpus-per-trial", "2", "--fuse", "2"], "--gpus-per-trial 2: "),
])
def test_gpus_per_trial_that_cannot_split_the_tasks_gpus_is_one_line(tmp_path, demo_dir, args,
                                                                      needle):
    path = write_study(tmp_path, demo_dir, storage=f"journal:{tmp_path / 'j.log'}")
    r = cli("submit", str(path), "--slurm", "--no-submit", *args)
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


def test_a_requeued_task_comes_back_and_its_trial_ends_with_the_uninterrupted_f1(
        cluster, tmp_path, demo_dir):
    # One task, so SQLite may hold the study; one trial, interrupted twice.
    path = write_study(tmp_path, demo_dir, n_trials=1, trainer=SLOW)
    job = _submit(cluster, path, "--array", "1")
    task, trials_dir = f"{job}_0", tmp_path / "out" / "trials"

    # Slurm's own stop (as for a preemption): TERM to every process of the task, then requeue.
    _wait_for_checkpoint(cluster, job, trials_dir / "trial-0000")
    reference = _reference(path, trials_of(path)[0].params, tmp_path / "ref")
    cluster.run("scontrol", "requeue", task)
    _back_in_queue(cluster, task)
    first_stop = _step(list_checkpoints(trials_dir / "trial-0000" / "checkpoints")[-1])

    # The time-limit warning (--signal=B:TERM@grace): TERM to the batch shell only, which
    # passes it to its worker and, once the trial checkpointed, requeues its own task.
    _wait_for_checkpoint(cluster, job, trials_dir / "trial-0001", min_step=first_stop + 1)
    cluster.run("scancel", "--batch", "--signal=TERM", task)
    _back_in_queue(cluster, task)
    second_stop = _step(list_checkpoints(trials_dir / "trial-0001" / "checkpoints")[-1])

    assert cluster.wait_for(job, DONE) == {task: "COMPLETED"}
    t = trials_of(path)
    assert [x.state for x in t] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert [x.system_attrs.get("hpsearch:fail_reason") for x in t[:2]] == ["interrupted"] * 2
    assert [x.system_attrs["hpsearch:slurm_job"] for x in t] == [task] * 3
    assert [x.system_attrs.get("hpsearch:slurm_restarts") for x in t] == [None, 1, 2]
    # Each continuation started from the checkpoint its predecessor wrote on the signal.
    assert t[1].system_attrs["hpsearch:retry_of"] == 0 and t[2].system_attrs[
        "hpsearch:retry_of"] == 1
    assert t[2].user_attrs["resumed_from_step"] == second_stop > first_stop >= 10
    log = _logs(trials_dir)
    # Both times the worker's own trial checkpointed on the signal and was queued to continue:
    # no trial was killed (a second TERM counted as "stop at once") and found dead later.
    assert log.count("interrupted: the running trials checkpointed") == 2, log
    assert "resumed interrupted trial" not in log and "stopped at once" not in log, log
    assert log.count(f"requeueing {task}") == 1, log  # after the warning only
    assert t[2].value == _reference_f1(reference, tmp_path / "ref")


def test_an_array_of_two_runs_exactly_n_trials_though_a_task_is_killed_outright(
        cluster, tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=3, trainer={**SLOW, "max_epochs": 4},
                       storage=f"journal://{tmp_path / 'out' / 'journal.log'}")
    job = _submit(cluster, path, "--array", "2", "--cpus-per-task", "1", "--grace", "60")
    script = (tmp_path / "out" / "slurm" / "worker.sbatch").read_text()
    for line in ("#SBATCH --array=0-1", "#SBATCH --requeue", "#SBATCH --signal=B:TERM@60",
                 "#SBATCH --cpus-per-task=1", f"worker {path}"):
        assert line in script
    jobs = json.loads((tmp_path / "out" / "slurm" / "jobs.json").read_text())["jobs"]
    assert [(j["job"], j["tasks"]) for j in jobs] == [(job, 2)]

    # A trial with a checkpoint, in a task whose fellow is still running: kill its task.
    deadline = time.time() + 120
    while True:
        tasks = cluster.tasks(job)
        victim = next((t for t in trials_of(path, [TrialState.RUNNING])
                       if list_checkpoints(Path(t.system_attrs.get("hpsearch:trial_dir", "-"))
                                           / "checkpoints")), None)
        if victim is not None and list(tasks.values()) == ["RUNNING"] * 2:
            break
        assert time.time() < deadline, _logs(tmp_path / "out" / "trials")
        time.sleep(0.05)
    killed_task = victim.system_attrs["hpsearch:slurm_job"]
    survivor = ({f"{job}_0", f"{job}_1"} - {killed_task}).pop()
    cluster.run("scancel", "--signal=KILL", killed_task)

    tasks = cluster.wait_for(job, DONE)
    assert tasks[survivor] == "COMPLETED" and tasks[killed_task] != "COMPLETED", tasks
    t = {x.number: x for x in trials_of(path)}
    killed = t[victim.number]
    assert killed.state == TrialState.FAIL
    assert killed.system_attrs["hpsearch:fail_reason"] == "interrupted"
    cont = next(x for x in t.values() if x.system_attrs.get("hpsearch:retry_of") == killed.number)
    assert cont.state == TrialState.COMPLETE and cont.params == killed.params
    assert cont.system_attrs["hpsearch:slurm_job"] == survivor
    assert cont.user_attrs["resumed_from_step"] >= 5
    # Exactly n_trials count, all complete, each recorded with the task that ran it.
    counted = [x for x in t.values() if x.system_attrs.get("hpsearch:fail_reason") is None]
    assert len(counted) == 3 and all(x.state == TrialState.COMPLETE for x in counted)
    assert {x.system_attrs["hpsearch:slurm_job"] for x in t.values()} == {survivor, killed_task}

    r = hpsearch("status", str(path), env=cluster.env)
    assert r.returncode == 0, r.stderr
    assert "3/3 trials counted" in r.stdout
    assert f"slurm job {job} (2 tasks, submitted " in r.stdout
    assert re.search(rf"{survivor} +COMPLETED +localhost", r.stdout), r.stdout
    assert re.search(rf"{killed_task} +{tasks[killed_task]} +localhost", r.stdout), r.stdout
    assert f"[slurm {killed_task}] interrupted" in r.stdout


def test_cancel_checkpoints_the_running_trial_then_cancels_and_nothing_requeues(
        cluster, tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=2, trainer=SLOW)
    job = _submit(cluster, path, "--array", "1")
    _wait_for_checkpoint(cluster, job, tmp_path / "out" / "trials" / "trial-0000")
    r = hpsearch("cancel", str(path), "--wait", "60", env=cluster.env)
    assert r.returncode == 0, r.stderr
    assert f"cancelled: job(s) {job}" in r.stdout

    tasks = cluster.tasks(job)
    assert set(tasks.values()) <= DONE, tasks
    log = _logs(tmp_path / "out" / "trials")
    assert "interrupted: the running trials checkpointed" in log, log
    assert "requeueing" not in log, log
    t = trials_of(path)
    assert [x.state for x in t] == [TrialState.FAIL, TrialState.WAITING]
    assert t[0].system_attrs["hpsearch:fail_reason"] == "interrupted"
    assert list_checkpoints(tmp_path / "out" / "trials" / "trial-0000" / "checkpoints")
    jobs = json.loads((tmp_path / "out" / "slurm" / "jobs.json").read_text())["jobs"]
    assert jobs[0]["job"] == job and jobs[0]["cancelled"]

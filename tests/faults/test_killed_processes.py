"""Processes killed under --workers: a trial process (the OOM killer, kill -9) is that
trial's crash, recorded by its worker, which goes on; a killed worker's trial is taken over by a
survivor from its last checkpoint."""

from __future__ import annotations

import os
import signal
import time

import optuna
import pytest
from conftest import spawn_hpsearch, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.attrs import (
    A_PID,
    A_REASON,
    A_RETRY_OF,
    A_WORKER_PID,
    INTERRUPTED,
    counts_toward_total,
)
from hpsearch.config import load_study
from hpsearch.recovery import process_alive
from hpsearch.storage import open_storage
from hpsearch.trainer.checkpoint import list_checkpoints

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]


def _worker_of(trial: optuna.trial.FrozenTrial) -> int:
    return int(trial.system_attrs[A_WORKER_PID])


def _alive(pid: int) -> bool:
    return process_alive(pid)


@pytest.mark.slow
def test_killed_worker_trial_is_resumed_by_a_survivor(tmp_path, demo_dir):
    """Kill one of 3 workers mid-trial, and another worker's trial process: the study still
    reaches n_trials, a survivor resumes the dead worker's trial from its checkpoint, and the
    worker whose trial crashed records it and goes on with the next one."""
    # Slow enough to be caught mid-trial: ~25 optimizer steps, a checkpoint every 3.
    slow = {"train_limit": 200, "max_tokens": 256, "max_epochs": 1, "checkpoint_every": 3,
            "val_limit": 20}
    path = write_study(tmp_path, demo_dir, name="kill", n_trials=4, trainer=slow)
    proc = spawn_hpsearch("run", str(path), "--workers", "3")
    trials_dir = tmp_path / "out" / "trials"
    deadline = time.time() + 120
    study = None
    while True:  # one snapshot: a trial with a checkpoint, and another one running
        assert time.time() < deadline, "no two trials running with a checkpoint in time"
        assert proc.poll() is None, proc.communicate()
        if study is None:  # opened once: a fresh open per look is slow enough to miss the moment
            try:
                study = optuna.load_study(study_name="kill", storage=open_storage(
                    load_study(path).storage_url, heartbeat=False))
            except KeyError:  # not created yet
                time.sleep(0.2)
                continue
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        running = [t for t in running if t.system_attrs.get(A_PID, -1)
                   not in (-1, t.system_attrs.get(A_WORKER_PID))]
        steps = {t.number: list_checkpoints(trials_dir / f"trial-{t.number:04d}" / "checkpoints")
                 for t in running}
        ready = [t for t in running if steps[t.number]
                 and int(steps[t.number][-1].name.split("-")[1]) >= 3]
        if ready and len(running) >= 2:
            killed = ready[0]
            crash = next(t for t in running if t.number != killed.number)
            break
        time.sleep(0.05)
    number, step = killed.number, int(steps[killed.number][-1].name.split("-")[1])
    worker_pid, trial_pid = _worker_of(killed), int(killed.system_attrs[A_PID])
    os.kill(worker_pid, signal.SIGKILL)
    os.kill(int(crash.system_attrs[A_PID]), signal.SIGKILL)  # as the OOM killer would

    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert f"(pid {worker_pid}) ended: killed by SIGKILL" in err
    assert not _alive(trial_pid)  # the trial died with its worker: nothing left training

    trials = trials_of(path)
    old = trials[number]
    assert old.state == TrialState.FAIL
    assert old.system_attrs[A_REASON] == INTERRUPTED
    (cont,) = [t for t in trials if t.system_attrs.get(A_RETRY_OF) == number]
    assert cont.state == TrialState.COMPLETE and cont.params == old.params
    assert cont.user_attrs["resumed_from_step"] >= step  # from the checkpoint, not step 0
    assert _worker_of(cont) != worker_pid  # a survivor ran it

    crashed = trials[crash.number]
    assert crashed.state == TrialState.FAIL and crashed.user_attrs["fail_reason"] == "crashed"
    assert "killed by SIGKILL" in crashed.user_attrs["error"]
    assert any(_worker_of(t) == _worker_of(crash) for t in trials[crash.number + 1:])

    counted = [t for t in trials if counts_toward_total(t)]
    assert len(counted) == 4 and len(trials) == 5  # the killed attempt does not count
    assert sorted(t.state.name for t in counted) == ["COMPLETE"] * 3 + ["FAIL"]
    assert "resumed interrupted trial(s): " in out

"""Ctrl-C and SIGTERM: the first checkpoints every running trial and exits 130, a second stops
at once; alone and with --workers. (That the next run resumes a checkpointed trial to its
uninterrupted F1 is in test_resume.py and test_workers.py.)"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli, spawn_hpsearch, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.attrs import A_REASON, A_RETRY_OF, INTERRUPTED, counts_toward_total
from hpsearch.trainer.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

#: ~50 short steps a trial (a second or so), a checkpoint every 3: caught mid-trial with one
#: behind it.
SLOW = {"train_limit": 200, "max_tokens": 256, "max_epochs": 3, "checkpoint_every": 3,
        "val_limit": 20}
#: Steps of a few tenths of a second and no periodic checkpoint: a checkpoint in the folder can
#: only be the one a stop writes.
HEAVY = {"train_limit": 80, "val_limit": 20, "max_tokens": 2048, "max_epochs": 1,
         "checkpoint_every": 1000,
         "scratch": {"hidden_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4,
                     "intermediate_size": 1024, "vocab_size": 800}}
MODES = {"alone": (), "workers": ("--workers", "2")}


def _trial(tmp_path: Path, n: int = 0) -> Path:
    return tmp_path / "out" / "trials" / f"trial-{n:04d}"


def _wait(cond, proc: subprocess.Popen, what: str, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)


def _steps_logged(folder: Path) -> int:
    try:
        rows = (folder / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return sum(1 for r in rows if r.endswith("}") and "loss" in json.loads(r))


@pytest.mark.parametrize("mode", list(MODES))
def test_sigterm_checkpoints_every_running_trial_and_exits_130_like_ctrl_c(tmp_path, demo_dir,
                                                                           mode):
    path = write_study(tmp_path, demo_dir, n_trials=2, trainer=SLOW)
    proc = spawn_hpsearch("run", str(path), *MODES[mode])
    _wait(lambda: any(int(c.name.split("-")[1]) >= 3
                      for c in list_checkpoints(_trial(tmp_path) / "checkpoints")),
          proc, "a checkpoint")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint" in out + err
    trials = trials_of(path)
    stopped = [t for t in trials if t.system_attrs.get(A_REASON) == INTERRUPTED]
    assert stopped and all(t.state == TrialState.FAIL for t in stopped)
    for t in stopped:  # each checkpointed, and queued to resume with the same parameters
        assert list_checkpoints(_trial(tmp_path, t.number) / "checkpoints")
        (cont,) = [c for c in trials if c.system_attrs.get(A_RETRY_OF) == t.number]
        assert cont.state == TrialState.WAITING and cont.params == t.params
    assert not [t for t in trials if t.state == TrialState.RUNNING]


@pytest.mark.parametrize("mode", list(MODES))
def test_a_second_ctrl_c_stops_at_once_and_the_next_run_finishes(tmp_path, demo_dir, mode):
    path = write_study(tmp_path, demo_dir, n_trials=2 if mode == "workers" else 1,
                       trainer=HEAVY)
    proc = spawn_hpsearch("run", str(path), *MODES[mode])
    _wait(lambda: _steps_logged(_trial(tmp_path)) >= 2, proc, "two training steps")
    proc.send_signal(signal.SIGINT)
    stream = proc.stderr if mode == "workers" else proc.stdout
    while "stopping" not in (line := stream.readline()):  # the first one was heard
        assert line, proc.communicate()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopped at once" in err
    for n in range(2 if mode == "workers" else 1):  # no trial wrote its stop checkpoint
        assert not list_checkpoints(_trial(tmp_path, n) / "checkpoints")

    r = cli("run", str(path))  # in this process: what it finds, not how it runs, is the point
    assert r.exit_code == 0, r.stderr
    counted = [t for t in trials_of(path) if counts_toward_total(t)]
    assert [t.state for t in counted] == [TrialState.COMPLETE] * len(counted)
    assert len(counted) == (2 if mode == "workers" else 1)

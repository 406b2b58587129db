"""Kill it anywhere, run it again: the interrupted trial continues from its checkpoint."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import cli, spawn_hpsearch, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.config import load_study
from hpsearch.trainer import Interrupted, prepare, train
from hpsearch.trainer.checkpoint import list_checkpoints

# Every test trains a trial until it has checkpoints.
pytestmark = pytest.mark.slow

# Slow enough to be caught mid-trial: ~60 optimizer steps, a checkpoint every 5.
SLOW = {"train_limit": 400, "max_tokens": 256, "max_epochs": 2, "checkpoint_every": 5}


def _start(path: Path) -> subprocess.Popen:
    return spawn_hpsearch("run", str(path))


def _wait_for_checkpoint(trial_dir: Path, proc: subprocess.Popen, min_step: int = 10) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpts = list_checkpoints(trial_dir / "checkpoints")
        if ckpts and int(ckpts[-1].name.split("-")[1]) >= min_step:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


#: A point that learns on the demo data: equal runs at F1 0 would prove nothing.
GOOD = [{"learning_rate": 5e-3, "weight_decay": 1e-3}]


def _rows(folder: Path) -> dict[tuple[int, bool], dict]:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], bool(r.get("eval"))): r for r in rows}


def _assert_uninterrupted(path: Path, killed, cont) -> None:
    """The interrupted trial and its continuation, step by step, are the run that was never
    interrupted: every logged loss and every evaluation's F1, the final one and the best."""
    args = [a for k, v in cont.params.items() for a in ("--set", f"{k}={v!r}")]
    ref_dir = Path(cont.system_attrs["hpsearch:trial_dir"]).parent.parent / "ref"
    # In this process: the reference needs no fresh interpreter, only the same trainer.
    r = cli("train", str(path), *args, "--out", str(ref_dir))
    assert r.exit_code == 0, r.output
    ref = _rows(ref_dir)
    first = _rows(Path(killed.system_attrs["hpsearch:trial_dir"]))
    then = _rows(Path(cont.system_attrs["hpsearch:trial_dir"]))
    resumed = cont.user_attrs["resumed_from_step"]
    got = {**{k: v for k, v in first.items() if k[0] <= resumed}, **then}
    assert sorted(got) == sorted(ref), "the same steps logged, none twice, none missing"
    for key, row in ref.items():
        field = "val_f1" if key[1] else "loss"
        assert got[key][field] == pytest.approx(row[field], rel=1e-6, abs=1e-9), key
    evals = [ref[k]["val_f1"] for k in sorted(ref) if k[1]]
    assert cont.value == max(evals)
    assert max(evals) > 0.3, "the run learned something"


def test_sigkilled_trial_resumes_from_its_checkpoint_to_the_uninterrupted_f1(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=2, trainer=SLOW, enqueue=GOOD)
    proc = _start(path)
    _wait_for_checkpoint(tmp_path / "out" / "trials" / "trial-0000", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = trials_of(path)[0]
    assert killed.state == TrialState.RUNNING  # what a power cut leaves behind

    r = cli("resume", str(path))
    assert r.exit_code == 0, r.stderr
    assert "resumed interrupted trial(s): 0" in r.stdout
    trials = trials_of(path)
    assert trials[0].state == TrialState.FAIL
    assert trials[0].system_attrs["hpsearch:fail_reason"] == "interrupted"
    cont = trials[1]
    assert cont.system_attrs["hpsearch:retry_of"] == 0
    assert cont.params == killed.params and cont.state == TrialState.COMPLETE
    resumed_step = cont.user_attrs["resumed_from_step"]
    assert resumed_step >= 10  # continued from its checkpoint, not from step 0
    assert f"(resumed from step {resumed_step})" in r.stdout
    # n_trials counts the continuation, not the interrupted attempt.
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE] * 2 and len(trials) == 3
    # Exactly what an uninterrupted run with the same parameters and seed gives (CPU, fp32).
    _assert_uninterrupted(path, trials[0], cont)


def test_sigint_checkpoints_exits_130_and_resumes(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=1, trainer=SLOW, enqueue=GOOD)
    proc = _start(path)
    trial_dir = tmp_path / "out" / "trials" / "trial-0000"
    _wait_for_checkpoint(trial_dir, proc, min_step=5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint" in out + err
    ckpts = list_checkpoints(trial_dir / "checkpoints")
    assert ckpts
    stopped_at = int(ckpts[-1].name.split("-")[1])
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]

    r = cli("resume", str(path))
    assert r.exit_code == 0, r.stderr
    first, done = trials_of(path)
    assert done.state == TrialState.COMPLETE
    assert done.user_attrs["resumed_from_step"] == stopped_at
    _assert_uninterrupted(path, first, done)


def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path, demo_dir, caplog):
    cfg = load_study(write_study(tmp_path, demo_dir, trainer=SLOW)).trainer_for(
        {"learning_rate": 3e-3})
    prep = prepare(cfg, demo_dir, tmp_path / "cache")
    steps = iter(range(1000))
    with pytest.raises(Interrupted):
        train(cfg, prep, tmp_path / "t", should_stop=lambda: next(steps) >= 12)
    ckpts = list_checkpoints(tmp_path / "t" / "checkpoints")
    assert [c.name for c in ckpts] == ["step-00000010", "step-00000013"]
    weights = ckpts[-1] / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a torn write

    with caplog.at_level(logging.WARNING):
        resumed = train(cfg, prep, tmp_path / "t")
    assert resumed.resumed_from_step == 10
    assert "skipping damaged checkpoint" in caplog.text and "step-00000013" in caplog.text
    assert resumed.value == train(cfg, prep, tmp_path / "fresh").value

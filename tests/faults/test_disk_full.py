"""The disk fills while a trial writes: the last good checkpoint stays, the database is intact,
the trial is recorded with reason disk_full, and the next run resumes it once there is space.

The disk is a real one: a small tmpfs mounted for the test (root only; skipped loudly without
the right to mount), holding the study's output folder. A watcher fills it up with a ballast
file as soon as the trial's first checkpoint is on it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import cli, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.trainer import checkpoint as ckpt


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        msg = f"DISK-FULL TEST SKIPPED: cannot mount a tmpfs here ({r.stderr.strip()})"
        warnings.warn(msg, stacklevel=1)
        print(f"\n{'!' * 80}\n{msg}\n{'!' * 80}", file=sys.__stderr__)
        pytest.skip(msg)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill_when_checkpointed(trial_dir: Path, ballast: Path, done: threading.Event) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and not ckpt.list_checkpoints(trial_dir / "checkpoints"):
        time.sleep(0.005)
    _fill(ballast, done)


def _fill(ballast: Path, done: threading.Event) -> None:
    with open(ballast, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
    done.set()


@pytest.mark.slow
def test_disk_full_keeps_the_checkpoint_and_the_study_and_resumes_later(tmp_path, demo_dir,
                                                                       small_disk):
    path = write_study(
        tmp_path, demo_dir, n_trials=1, output_dir=str(small_disk / "out"),
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        trainer={"train_limit": 300, "val_limit": 40, "max_tokens": 256, "max_epochs": 2,
                 "checkpoint_every": 3},
    )
    trial_dir = small_disk / "out" / "trials" / "trial-0000"
    ballast, filled = small_disk / "ballast", threading.Event()
    watcher = threading.Thread(target=_fill_when_checkpointed,
                               args=(trial_dir, ballast, filled), daemon=True)
    watcher.start()
    r = cli("run", str(path))
    watcher.join(timeout=60)
    assert filled.is_set()
    assert r.exit_code == 1, r.output
    msg = r.stderr.strip().splitlines()[-1]
    assert msg.startswith("error: no space left on the device") and "run again" in msg

    ts = trials_of(path)  # the database is intact and says what happened
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.WAITING]
    assert ts[0].system_attrs["hpsearch:fail_reason"] == "disk_full"
    good = ckpt.latest(trial_dir / "checkpoints")
    assert good is not None and good.step >= 3  # whole, checksummed, loadable
    assert not [p for p in (trial_dir / "checkpoints").iterdir() if p.name.startswith(".tmp")]

    # Run again before freeing anything: the continuation cannot even adopt the checkpoint;
    # it fails the same way and hands the same checkpoint on.
    r = cli("run", str(path))
    assert r.exit_code == 1 and "no space left" in r.stderr
    ts = trials_of(path)
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.FAIL, TrialState.WAITING]
    assert ts[1].system_attrs["hpsearch:fail_reason"] == "disk_full"
    assert ts[2].system_attrs["hpsearch:trial_dir"] == str(trial_dir)
    assert ckpt.latest(trial_dir / "checkpoints").path == good.path

    ballast.unlink()  # the user frees some space and runs the same command again
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    ts = trials_of(path)
    assert [t.state for t in ts] == [TrialState.FAIL] * 2 + [TrialState.COMPLETE]
    assert ts[2].params == ts[0].params and ts[2].system_attrs["hpsearch:retry_of"] == 1
    assert ts[2].user_attrs["resumed_from_step"] == good.step
    assert "1/1 trials" in r.output
    assert yaml.safe_load(path.read_text())["n_trials"] == 1


def _fill_when_any_checkpointed(trials_dir: Path, ballast: Path, done: threading.Event) -> None:
    deadline = time.time() + 180
    while time.time() < deadline and not any(
        ckpt.list_checkpoints(d / "checkpoints") for d in trials_dir.glob("trial-*")
    ):
        time.sleep(0.005)
    _fill(ballast, done)


@pytest.mark.slow
def test_disk_full_with_workers_stops_every_worker_and_resumes_later(tmp_path, demo_dir,
                                                                     small_disk):
    """Two workers share the full disk: both stop, nothing is left RUNNING, and the next run
    resumes every trial that was cut off and ends with exactly n_trials."""
    from conftest import hpsearch

    path = write_study(
        tmp_path, demo_dir, n_trials=3, output_dir=str(small_disk / "out"),
        storage=f"sqlite:///{tmp_path / 'study.db'}",
        trainer={"train_limit": 300, "val_limit": 40, "max_tokens": 256, "max_epochs": 2,
                 "checkpoint_every": 3},
    )
    trials_dir = small_disk / "out" / "trials"
    ballast, filled = small_disk / "ballast", threading.Event()
    watcher = threading.Thread(target=_fill_when_any_checkpointed,
                               args=(trials_dir, ballast, filled), daemon=True)
    watcher.start()
    r = hpsearch("run", str(path), "--workers", "2", timeout=300)
    watcher.join(timeout=60)
    assert filled.is_set()
    assert r.returncode == 1, r.stdout + r.stderr
    msg = r.stderr.strip().splitlines()[-1]
    assert msg.startswith("error: no space left on the device") and "run again" in msg

    ts = trials_of(path)
    assert TrialState.RUNNING not in {t.state for t in ts}
    cut = [t for t in ts if t.state == TrialState.FAIL]
    assert cut and {t.system_attrs["hpsearch:fail_reason"] for t in cut} == {"disk_full"}
    waiting = [t for t in ts if t.state == TrialState.WAITING]
    # Every line of continuations cut off by the full disk waits to be resumed, once.
    lines = {t.system_attrs.get("hpsearch:origin", t.number) for t in cut}
    assert sorted(t.system_attrs["hpsearch:origin"] for t in waiting) == sorted(lines)
    for t in waiting:  # what it resumes from is whole
        assert not [p for p in Path(t.system_attrs["hpsearch:trial_dir"], "checkpoints")
                    .glob(".tmp*")]

    ballast.unlink()
    r = cli("run", str(path))  # in this process: what the next run finds is the point
    assert r.exit_code == 0, r.stdout + r.stderr
    ts = trials_of(path)
    done = [t for t in ts if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and "3/3 trials" in r.stdout
    assert TrialState.WAITING not in {t.state for t in ts}
    resumed = [t for t in done if t.user_attrs.get("resumed_from_step")]
    assert resumed  # at least the trial that was checkpointed went on from its checkpoint


def test_a_checkpoint_that_fills_the_disk_midway_says_no_space(small_disk):
    """torch.save reports a full disk as "unexpected pos ...", with no errno: without care, the
    trial would be recorded as a plain error and never resumed. The weights fit here, the
    optimizer state after them does not."""
    import errno

    import torch

    model = torch.nn.Linear(256, 256)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 256)).sum().backward()
    opt.step()
    root = small_disk / "checkpoints"
    good = ckpt.save(root, model=model, optimizer=opt, scaler=None, state={"step": 1})
    size = sum(f.stat().st_size for f in good.iterdir())
    with open(small_disk / "ballast", "wb") as f:  # leave room for the weights and a little
        f.write(b"\0" * (shutil.disk_usage(small_disk).free - size // 2))
    with pytest.raises(OSError) as e:
        ckpt.save(root, model=model, optimizer=opt, scaler=None, state={"step": 2})
    assert e.value.errno == errno.ENOSPC and "No space left on device" in str(e.value)
    assert ckpt.list_checkpoints(root) == [good]  # the last good one stays, whole
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")]
    ckpt.verify(good)

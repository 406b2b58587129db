"""One trial on several devices: ``devices_per_trial: 2`` as two gloo ranks on the CPU.

The global batch is the one-device batch, split across the ranks: in fp32 without dropout
every step's loss agrees with the one-process run's to 1e-5 and every evaluation's F1 is the
same. Rank 0 alone writes and talks to the study; the ranks stop together (a stop request, the
pruner); a rank killed mid-trial interrupts the trial, which resumes, on any number of devices,
to the F1 it would have reached. (NCCL on several GPUs is not run here: see the README.)
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    NO_DROPOUT,
    TINY,
    exact_trainer,
    hpsearch,
    spawn_hpsearch,
    study_config,
    trials_of,
    write_study,
)
from optuna.trial import TrialState

from hpsearch import study as driver
from hpsearch.config import TrainerConfig, load_study
from hpsearch.trainer import Interrupted, fastpath, loop, prepare, train
from hpsearch.trainer.checkpoint import list_checkpoints
from hpsearch.workers import gpu_slots

GOOD = {"learning_rate": 5e-3, "weight_decay": 1e-3}




@pytest.fixture(scope="module")
def prep(exact_prep):
    return exact_prep


def _rows(folder: Path) -> dict[tuple[int, bool], dict]:
    rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
    return {(r["step"], bool(r.get("eval"))): r for r in rows}


def _assert_same_run(got: dict, ref: dict) -> None:
    """Every step's loss within 1e-5 of the reference's, every evaluation's F1 the same."""
    assert sorted(got) == sorted(ref), "the same steps logged, none twice, none missing"
    losses = [(got[k]["loss"], ref[k]["loss"]) for k in ref if not k[1]]
    worst = max(abs(a - b) / abs(b) for a, b in losses)
    assert worst <= 1e-5, worst
    f1 = [ref[k]["val_f1"] for k in sorted(ref) if k[1]]
    assert [got[k]["val_f1"] for k in sorted(ref) if k[1]] == f1
    assert len(f1) >= 3 and max(f1) > 0.3, "a run that learns, or equal curves prove little"


def _rank_ends(folder: Path) -> list[str]:
    return re.findall(r"rank 1 \(pid \d+\) ended: (.*);", (folder / "train.log").read_text())


# ----------------------------------------------------------------------------- fast


def test_gpus_are_grouped_per_trial_and_bad_combinations_are_one_line(demo_dir, tmp_path):
    assert gpu_slots(["0", "1", "2", "3"], None, 1, 2) == ["0,1", "2,3"]
    assert gpu_slots(["0", "1"], None, 2, 2) == ["0,1", "0,1"]
    assert gpu_slots(["0", "1", "2", "3"], 3, 1, 2) == ["0,1", "2,3", "0,1"]
    assert gpu_slots(["0", "1"], None, 1) == ["0", "1"]  # one GPU a trial, as before

    for args, needle in [
        (["--gpus", "0,1,2", "--gpus-per-trial", "2"], "do not split into trials of 2"),
        (["--gpus-per-trial", "2"], "--gpus-per-trial needs --gpus"),
        (["--fuse", "2", "--gpus", "0,1", "--gpus-per-trial", "2"],
         "trainer.devices_per_trial: fused trials"),
    ]:
        path = write_study(tmp_path, demo_dir)
        r = hpsearch("run", str(path), *args)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and needle in lines[0], (args, r.stderr)
    assert not (tmp_path / "out").exists()


def test_devices_per_trial_is_a_way_to_run_not_a_setting(demo_dir, tmp_path):
    from hpsearch.config.loading import study_fingerprint
    from hpsearch.config.trainer import RUN_ONLY

    assert "devices_per_trial" in RUN_ONLY  # a checkpoint resumes on any number of devices
    one = study_fingerprint(study_config(tmp_path, demo_dir))
    two = study_fingerprint(study_config(tmp_path, demo_dir, trainer={"devices_per_trial": 2}))
    assert one == two
    with pytest.raises(ValueError, match="rank r takes the r-th visible GPU"):
        exact_trainer(demo_dir, device="cuda:1", devices_per_trial=2)


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
@pytest.mark.parametrize("over", [{}, {"gradient_accumulation_steps": 2, "batch_size": 12}],
                         ids=["max_tokens", "accumulation"])
def test_two_ranks_train_what_one_process_does(demo_dir, prep, tmp_path, monkeypatch, over):
    rows_run: list[int] = []  # on rank 0 only: the other rank's forwards are in its process
    inner = fastpath.Runner.forward_backward

    def spy(self, batch, *args, **kw):
        rows_run.append(int((batch["attention_mask"].sum(1) > 0).sum()))
        return inner(self, batch, *args, **kw)

    monkeypatch.setattr(fastpath.Runner, "forward_backward", spy)
    one = train(exact_trainer(demo_dir, **over), prep, tmp_path / "one")
    rows_one, rows_run[:] = sum(rows_run), []
    two = train(exact_trainer(demo_dir, devices_per_trial=2, **over), prep, tmp_path / "two")

    assert (two.steps, two.train_tokens, two.value) == (one.steps, one.train_tokens, one.value)
    _assert_same_run(_rows(tmp_path / "two"), _rows(tmp_path / "one"))
    assert rows_one * 0.4 < sum(rows_run) < rows_one * 0.6, "rank 0 ran about half the windows"
    # Rank 0 alone wrote, the same files one process writes; rank 1 ran every step.
    listing = sorted(str(p.relative_to(tmp_path / "one")) for p in (tmp_path / "one").rglob("*"))
    assert sorted(str(p.relative_to(tmp_path / "two"))
                  for p in (tmp_path / "two").rglob("*")) == listing
    assert _rank_ends(tmp_path / "two") == [f"done at step {one.steps}"]


@pytest.mark.slow
def test_a_stop_checkpoints_both_ranks_and_the_checkpoint_resumes_on_one(demo_dir, prep,
                                                                         tmp_path):
    cfg = exact_trainer(demo_dir, checkpoint_every=5)
    whole = train(cfg, prep, tmp_path / "whole")
    steps = iter(range(1000))
    with pytest.raises(Interrupted):
        train(cfg.model_copy(update={"devices_per_trial": 2}), prep, tmp_path / "t",
              should_stop=lambda: next(steps) >= 6)
    assert _rank_ends(tmp_path / "t") == ["interrupted (stopped at step 7)"]
    resumed = train(cfg, prep, tmp_path / "t")  # written by two ranks, resumed by one
    assert resumed.resumed_from_step == 7
    assert resumed.value == whole.value
    _assert_same_run(_rows(tmp_path / "t"), _rows(tmp_path / "whole"))


@pytest.mark.slow
def test_with_dropout_a_two_rank_trial_resumes_on_two_ranks_bit_for_bit(demo_dir, prep,
                                                                        tmp_path):
    """Each rank draws its own dropout masks; the checkpoint keeps every rank's RNG state."""
    cfg = TrainerConfig(**{**TINY, "data_dir": str(demo_dir), "learning_rate": 3e-3,
                           "eval_every": 4, "checkpoint_every": 5, "devices_per_trial": 2})
    assert cfg.scratch.hidden_dropout_prob > 0
    train(cfg, prep, tmp_path / "whole")
    steps = iter(range(1000))
    with pytest.raises(Interrupted):
        train(cfg, prep, tmp_path / "t", should_stop=lambda: next(steps) >= 6)
    assert train(cfg, prep, tmp_path / "t").resumed_from_step == 7

    def numbers(folder: Path) -> dict:
        return {k: (r.get("loss"), r.get("val_f1"), r.get("val_loss"))
                for k, r in _rows(folder).items()}

    assert numbers(tmp_path / "t") == numbers(tmp_path / "whole")


@pytest.mark.slow
def test_a_rank_that_fails_fails_the_trial_with_its_error(demo_dir, prep, tmp_path,
                                                          monkeypatch):
    step = loop._Training.step

    def out_of_memory_on_rank_1(self):
        if self.group is not None and self.group.rank == 1 and self.st.step == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (pretend)")
        return step(self)

    monkeypatch.setattr(loop._Training, "step", out_of_memory_on_rank_1)  # forked into rank 1
    t0 = time.monotonic()
    with pytest.raises(torch.OutOfMemoryError, match="rank 1: OutOfMemoryError"):
        train(exact_trainer(demo_dir, devices_per_trial=2), prep, tmp_path / "t")
    assert time.monotonic() - t0 < 30


@pytest.mark.slow
def test_median_pruner_prunes_both_ranks_at_one_step_and_the_study_goes_on(demo_dir, tmp_path):
    cfg = study_config(
        tmp_path, demo_dir, n_trials=3, pruner={"name": "median", "n_startup_trials": 1},
        enqueue=[GOOD, {"learning_rate": 1e-4, "weight_decay": 1e-3}],
        trainer={**NO_DROPOUT, "devices_per_trial": 2, "eval_every": 4, "max_epochs": 1})
    driver.run(cfg)
    first, pruned, then = trials_of(cfg)
    assert (first.state, pruned.state) == (TrialState.COMPLETE, TrialState.PRUNED)
    for t in (pruned, then):  # the study went on after the pruned trial; each on both ranks
        folder = Path(t.system_attrs["hpsearch:trial_dir"])
        if t.state == TrialState.PRUNED:
            assert _rank_ends(folder) == [f"pruned at step {t.user_attrs['pruned_step']}"]
        else:
            assert t.state == TrialState.COMPLETE
            assert _rank_ends(folder) == [f"done at step {t.user_attrs['steps']}"]


@pytest.mark.slow
def test_killed_rank_interrupts_the_trial_which_resumes_to_its_uninterrupted_f1(demo_dir,
                                                                               tmp_path):
    slow = {**NO_DROPOUT, "devices_per_trial": 2, "train_limit": 400, "max_tokens": 256,
            "max_epochs": 2, "checkpoint_every": 5, "eval_every": 10}
    path = write_study(tmp_path, demo_dir, n_trials=1, trainer=slow, enqueue=[GOOD])
    proc = spawn_hpsearch("run", str(path))
    folder = tmp_path / "out" / "trials" / "trial-0000"
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpts = list_checkpoints(folder / "checkpoints")
        if ckpts and int(ckpts[-1].name.split("-")[1]) >= 10:
            break
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    pid = int(re.search(r"ranks 1 pid (\d+)", (folder / "train.log").read_text())[1])
    import os

    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    out, err = proc.communicate(timeout=60)
    assert time.monotonic() - t0 < 60
    assert proc.returncode == 130, err
    assert f"rank 1 (pid {pid}) killed by SIGKILL" in out + err
    killed, waiting = trials_of(path)
    assert killed.state == TrialState.FAIL and waiting.state == TrialState.WAITING
    assert killed.system_attrs["hpsearch:fail_reason"] == "interrupted"

    cfg = load_study(path)
    driver.run(cfg)  # the next run resumes it, on two ranks again
    cont = trials_of(path)[1]
    assert cont.state == TrialState.COMPLETE and cont.user_attrs["resumed_from_step"] >= 10

    # What one process computes, uninterrupted, with the same parameters and seed.
    tcfg = cfg.trainer_for(cont.params).model_copy(update={"devices_per_trial": 1})
    ref = tmp_path / "ref"
    train(tcfg, prepare(tcfg, demo_dir, cfg.out / "cache"), ref)
    first = _rows(folder)
    then = _rows(Path(cont.system_attrs["hpsearch:trial_dir"]))
    resumed = cont.user_attrs["resumed_from_step"]
    got = {**{k: v for k, v in first.items() if k[0] <= resumed}, **then}
    _assert_same_run(got, _rows(ref))
    assert cont.value == max(r["val_f1"] for k, r in _rows(ref).items() if k[1])
    assert np.isfinite(cont.value)

"""Fused trials (trainer.fuse / --fuse K): K trials of a study trained as one batched model.

Every test runs the real command line on the tiny demo study (in this process, except where
the process is the point: a kill, a Ctrl-C, a pool of workers). Parameters are enqueued, so a
fused study and its solo twin train exactly the same trials, in the same order.
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest
from conftest import TINY, cli, hpsearch, spawn_hpsearch, trials_of, write_study
from optuna.trial import TrialState

pytestmark = pytest.mark.slow

# Dropout off: two runs of one trial then compute the same numbers, fused or not.
NO_DROPOUT = {"scratch": {**TINY["scratch"], "hidden_dropout_prob": 0.0,
                          "attention_probs_dropout_prob": 0.0}}
WIDE_LR = {"type": "float", "low": 1e-4, "high": 1e7, "log": True}


def _study(tmp_path: Path, demo_dir: Path, name: str, params: list[dict], fuse: int,
           trainer: dict | None = None, **over) -> Path:
    """A study file whose first trials are ``params``, in order."""
    from hpsearch.config import load_study
    from hpsearch.study import start_study

    folder = tmp_path / name
    folder.mkdir()
    over.setdefault("n_trials", len(params))
    path = write_study(folder, demo_dir, name=name,
                       trainer={**NO_DROPOUT, "fuse": fuse, **(trainer or {})}, **over)
    study = start_study(load_study(path))
    for p in params:
        study.enqueue_trial(p)
    return path


def _metrics(trial) -> tuple[dict[int, float], dict[int, float]]:
    """A trial's logged training losses and validation F1, by step."""
    rows = [json.loads(line) for line in
            (Path(trial.system_attrs["hpsearch:trial_dir"]) / "metrics.jsonl").read_text()
            .splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    f1 = {r["step"]: r["val_f1"] for r in rows if r.get("eval")}
    return losses, f1


PARAMS = [
    {"learning_rate": 8e-3, "weight_decay": 1e-3},
    {"learning_rate": 2e-3, "weight_decay": 5e-2},
    {"learning_rate": 5e-3, "weight_decay": 1e-4},
]


def test_a_fused_array_of_three_trains_each_member_as_its_solo_run(tmp_path, demo_dir):
    """Same initial weights, same batches, same updates: losses to 1e-4, F1 to 0.3 points at
    every evaluation, each member against the same trial trained alone."""
    fused = _study(tmp_path, demo_dir, "fused", PARAMS, fuse=3, trainer={"eval_every": 5})
    solo = _study(tmp_path, demo_dir, "solo", PARAMS, fuse=1, trainer={"eval_every": 5})
    for path in (fused, solo):
        r = cli("run", str(path))
        assert r.exit_code == 0, r.stderr
        assert ("fused 3 at a time" in r.stdout) == (path == fused)
    by_number = [{t.number: t for t in trials_of(p)} for p in (fused, solo)]
    for number in range(3):
        f, s = (trials[number] for trials in by_number)
        assert f.state == s.state == TrialState.COMPLETE
        assert f.params == s.params
        (f_loss, f_f1), (s_loss, s_f1) = _metrics(f), _metrics(s)
        steps = sorted(s_loss)[:20]
        assert len(steps) >= 10 and steps == sorted(f_loss)[:20]
        for step in steps:
            assert abs(f_loss[step] - s_loss[step]) <= 1e-4 * abs(s_loss[step]), (number, step)
        assert sorted(f_f1) == sorted(s_f1) and len(s_f1) >= 3
        for step, value in s_f1.items():
            assert abs(f_f1[step] - value) <= 0.003, (number, step, f_f1[step], value)
        assert abs(f.value - s.value) <= 0.003
        log = (Path(f.system_attrs["hpsearch:trial_dir"]) / "train.log").read_text()
        assert "fused array of 3" in log


def test_a_diverging_member_fails_alone_and_the_others_finish_as_alone(tmp_path, demo_dir):
    params = [PARAMS[0], {"learning_rate": 1e6, "weight_decay": 1e-3}, PARAMS[1]]
    space = {"learning_rate": WIDE_LR,
             "weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    fused = _study(tmp_path, demo_dir, "fused", params, fuse=3, search_space=space,
                   trainer={"monitor_every": 1})
    solo = _study(tmp_path, demo_dir, "solo", [params[0], params[2]], fuse=1,
                  search_space=space)
    for path in (fused, solo):
        r = cli("run", str(path))
        assert r.exit_code == 0, r.stderr
    f = {t.number: t for t in trials_of(fused)}
    s = {t.number: t for t in trials_of(solo)}
    assert f[1].state == TrialState.FAIL
    assert f[1].system_attrs["hpsearch:fail_reason"] == "nan_loss"
    # Each member's own health signals: the diverging one's gradients blow up before its NaN.
    rows = [json.loads(line) for line in (Path(f[1].system_attrs["hpsearch:trial_dir"])
                                          / "metrics.jsonl").read_text().splitlines()]
    norms = [r["grad_norm/global"] for r in rows if "grad_norm/global" in r]
    assert len(norms) >= 2 and norms[1] > 100 * norms[0], norms
    calm = [r["grad_norm/global"] for r in
            (json.loads(line) for line in (Path(f[0].system_attrs["hpsearch:trial_dir"])
                                           / "metrics.jsonl").read_text().splitlines())
            if "grad_norm/global" in r]
    assert max(calm[:3]) < norms[1]
    for fused_number, solo_number in ((0, 0), (2, 1)):
        assert f[fused_number].state == TrialState.COMPLETE
        assert abs(f[fused_number].value - s[solo_number].value) <= 0.003


def test_a_pruned_members_slot_takes_the_next_trial_and_the_study_ends_at_n_trials(
        tmp_path, demo_dir):
    bad = {"learning_rate": 1e-4, "weight_decay": 1e-3}
    params = [PARAMS[0], PARAMS[2], bad, PARAMS[1], bad]
    pruner = {"name": "median", "n_startup_trials": 2, "n_warmup_steps": 0}
    path = _study(tmp_path, demo_dir, "pruned", params, fuse=2, pruner=pruner,
                  trainer={"eval_every": 4})
    r = cli("run", str(path))
    assert r.exit_code == 0, r.stderr
    trials = trials_of(path)
    assert len(trials) == 5  # no more, no fewer, and none twice
    states = [t.state for t in trials]
    assert states.count(TrialState.PRUNED) >= 1
    assert set(states) <= {TrialState.COMPLETE, TrialState.PRUNED}
    for t in trials:
        if t.state == TrialState.PRUNED:
            assert not (Path(t.system_attrs["hpsearch:trial_dir"]) / "checkpoints").exists()
    assert "5/5 trials" in r.stdout
    again = cli("run", str(path))
    assert "nothing to do" in again.stdout and len(trials_of(path)) == 5


def test_kill_9_of_a_fused_run_resumes_every_member_from_its_checkpoint(tmp_path, demo_dir):
    slow = {"max_tokens": 256, "checkpoint_every": 3, "eval_every": 12}
    killed = _study(tmp_path, demo_dir, "killed", PARAMS, fuse=3, trainer=slow)
    whole = _study(tmp_path, demo_dir, "whole", PARAMS, fuse=3, trainer=slow)
    r = cli("run", str(whole))
    assert r.exit_code == 0, r.stderr
    expected = {json.dumps(t.params, sort_keys=True): t.value for t in trials_of(whole)}

    p = spawn_hpsearch("run", str(killed))
    trials_dir = killed.parent / "out" / "trials"
    deadline = time.time() + 300
    while time.time() < deadline:
        ckpts = [list((d / "checkpoints").glob("step-*")) for d in trials_dir.glob("trial-*")]
        if len(ckpts) == 3 and all(ckpts):
            break
        assert p.poll() is None, p.communicate()
        time.sleep(0.2)
    else:
        pytest.fail("the fused members wrote no checkpoints in time")
    p.kill()
    p.wait()
    assert {t.state for t in trials_of(killed)} == {TrialState.RUNNING}

    r = cli("run", str(killed))
    assert r.exit_code == 0, r.stderr
    assert "resumed interrupted trial(s): 0, 1, 2" in r.stdout
    # said when they are found, before the trials that continue them
    assert r.stdout.index("resumed interrupted") < r.stdout.index("\ntrial ")
    done = [t for t in trials_of(killed) if t.state == TrialState.COMPLETE]
    assert len(done) == 3
    for t in done:
        assert t.user_attrs["resumed_from_step"] > 0
        assert abs(t.value - expected[json.dumps(t.params, sort_keys=True)]) <= 0.003


def test_bayes_backend_fuses_three_trials(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=4, backend={"name": "bayes"},
                       trainer={"fuse": 3})
    r = cli("run", str(path))
    assert r.exit_code == 0, r.stderr
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    assert all("hpsearch:sampled_by" in t.system_attrs for t in trials)
    assert len({json.dumps(t.params, sort_keys=True) for t in trials}) == 4, "no point twice"


def test_fp16_fuses_and_fails_each_member_on_a_cpu_as_a_solo_trial_would(tmp_path, demo_dir):
    """fp16 is accepted with fuse > 1 (each member scales its own loss); on a CPU, which has
    no fp16 training, every trial fails with the solo trial's reason and the run ends."""
    path = write_study(tmp_path, demo_dir, n_trials=2, trainer={"fuse": 2, "precision": "fp16"})
    r = cli("run", str(path))
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.FAIL] * 2, r.stderr
    assert all("fp16 needs a CUDA device" in t.user_attrs["error"] for t in trials)


def test_two_workers_each_run_a_fused_array(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=5)
    r = hpsearch("run", str(path), "--workers", "2", "--fuse", "2")
    assert r.returncode == 0, r.stderr
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 5
    assert {t.system_attrs["hpsearch:worker"].split()[-1] for t in trials} == {"w0", "w1"}


@pytest.mark.parametrize("how", ["file", "flag"])
def test_a_search_that_changes_batch_shapes_refuses_fusion_in_one_line(tmp_path, demo_dir, how):
    space = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
             "max_tokens": {"type": "categorical", "choices": [512, 1024]}}
    path = write_study(tmp_path, demo_dir, search_space=space,
                       trainer={"fuse": 2} if how == "file" else {})
    r = cli("run", str(path), *(["--fuse", "2"] if how == "flag" else []))
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "search_space.max_tokens" in lines[0] and "fuse" in lines[0]
    assert not (tmp_path / "out" / "trials").exists()


def test_ctrl_c_checkpoints_every_member_exits_130_and_the_next_run_finishes(
        tmp_path, demo_dir):
    slow = {"max_tokens": 256, "checkpoint_every": 3, "eval_every": 12}
    path = _study(tmp_path, demo_dir, "stopped", PARAMS, fuse=3, trainer=slow)
    p = spawn_hpsearch("run", str(path))
    trials_dir = path.parent / "out" / "trials"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(trials_dir.glob("trial-*/metrics.jsonl"))) < 3:
        assert p.poll() is None, p.communicate()
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted" in err
    first = trials_of(path)
    assert [t.system_attrs.get("hpsearch:fail_reason") for t in first[:3]] == ["interrupted"] * 3
    assert all(list((trials_dir / f"trial-{n:04d}" / "checkpoints").glob("step-*"))
               for n in range(3))
    r = cli("run", str(path))
    assert r.exit_code == 0, r.stderr
    done = [t for t in trials_of(path) if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and all(t.user_attrs["resumed_from_step"] > 0 for t in done)

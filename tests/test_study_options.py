"""The study file's options do what the README's study.yaml says: timeout, keep, direction with
a metric to minimise, a metric other than F1, early stopping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ONE_EPOCH, cli, trials_of, write_study
from optuna.trial import TrialState

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Heartbeat of storage")]


def _evals(trial) -> list[dict]:
    rows = (Path(trial.system_attrs["hpsearch:trial_dir"]) / "metrics.jsonl").read_text()
    return [r for r in map(json.loads, rows.splitlines()) if r.get("eval")]


def test_timeout_starts_no_trial_after_it_and_lets_the_running_one_finish(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=20, timeout=1, trainer=ONE_EPOCH)
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    trials = trials_of(path)
    assert 1 <= len(trials) < 20  # the first one alone outlasts a second
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.parametrize("keep", ["none", "best"])
def test_keep_none_leaves_only_the_exported_best_model(tmp_path, demo_dir, keep):
    path = write_study(tmp_path, demo_dir, n_trials=2, keep=keep,
                       trainer={**ONE_EPOCH, "checkpoint_every": 2})
    assert cli("run", str(path)).exit_code == 0
    trials = trials_of(path)
    folders = [Path(t.system_attrs["hpsearch:trial_dir"]) for t in trials]
    assert not any((f / "checkpoints").exists() and any((f / "checkpoints").iterdir())
                   for f in folders)
    kept = [f for f in folders if (f / "best").exists()]
    assert len(kept) == (0 if keep == "none" else 1)
    assert (tmp_path / "out" / "best-model" / "config.json").exists()


def test_minimising_the_validation_loss_picks_the_lowest_loss(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=3, direction="minimize", metric="loss",
                       trainer={**ONE_EPOCH, "max_epochs": 2})
    assert cli("run", str(path)).exit_code == 0
    trials = trials_of(path)
    for t in trials:  # each trial's value: its lowest validation loss
        assert t.value == pytest.approx(min(r["val_loss"] for r in _evals(t)))
    r = cli("best", str(path), "--json")
    assert json.loads(r.stdout)["value"] == pytest.approx(min(t.value for t in trials))


def test_a_metric_other_than_f1_is_what_trials_report_and_keep(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=2, metric="accuracy",
                       trainer={**ONE_EPOCH, "max_epochs": 2})
    assert cli("run", str(path)).exit_code == 0
    for t in trials_of(path):
        evals = _evals(t)
        assert t.value == pytest.approx(max(r["val_accuracy"] for r in evals))
        assert t.intermediate_values == {r["step"]: pytest.approx(r["val_accuracy"])
                                         for r in evals}


def test_early_stopping_ends_a_trial_that_stopped_improving(tmp_path, demo_dir):
    # No gain of 0.5 F1 after the first evaluation: the second one ends the trial.
    es = {"patience": 1, "min_delta": 0.5, "min_epochs": 1}
    path = write_study(tmp_path, demo_dir, n_trials=1,
                       trainer={**ONE_EPOCH, "max_epochs": 6, "early_stopping": es})
    assert cli("run", str(path)).exit_code == 0
    (t,) = trials_of(path)
    assert t.state == TrialState.COMPLETE
    assert len(_evals(t)) == 2
    log = (Path(t.system_attrs["hpsearch:trial_dir"]) / "train.log").read_text()
    assert "early stop at step" in log

"""Every Optuna sampler as hpsearch builds and uses it: trials are claimed the way workers claim
them (a sampler built afresh per claim, seeded by the trial's number), no training involved."""

from __future__ import annotations

import math

import pytest
from conftest import study_config

from hpsearch.attrs import A_SAMPLER
from hpsearch.opening import open_study
from hpsearch.trial import claim_trials

pytestmark = [pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning"),
              pytest.mark.filterwarnings("ignore:Heartbeat of storage")]

CLASSES = {"tpe": "TPESampler", "random": "RandomSampler", "gp": "GPSampler",
           "cmaes": "CmaEsSampler", "qmc": "QMCSampler"}


def _score(params: dict) -> float:
    """A smooth objective with its top at lr 1e-3, wd 1e-2 (in log space)."""
    return -((math.log10(params["learning_rate"]) + 3) ** 2
             + (math.log10(params["weight_decay"]) + 2) ** 2)


def _study(tmp_path, demo_dir, sampler: str, n_trials: int = 10):
    space = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
             "weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}
    cfg = study_config(tmp_path / sampler, demo_dir, n_trials=n_trials, search_space=space,
                       backend={"name": "optuna", "sampler": sampler, "n_startup_trials": 3})
    return cfg, open_study(cfg, create=True)


@pytest.mark.parametrize("sampler", list(CLASSES))
def test_each_sampler_runs_a_study_and_records_itself(tmp_path, demo_dir, sampler):
    cfg, study = _study(tmp_path, demo_dir, sampler)
    for _ in range(cfg.n_trials):
        (trial,), _ = claim_trials(study, cfg, 1)
        study.tell(trial, _score(trial.params))
    trials = study.get_trials()
    assert len(trials) == cfg.n_trials
    assert {t.system_attrs[A_SAMPLER] for t in trials} == {CLASSES[sampler]}
    points = {tuple(sorted(t.params.items())) for t in trials}
    assert len(points) == cfg.n_trials, "no point proposed twice"
    for t in trials:
        assert 1e-5 <= t.params["learning_rate"] <= 1e-1
        assert 1e-4 <= t.params["weight_decay"] <= 1e-1


def test_two_workers_asking_at_once_under_tpe_get_different_points(tmp_path, demo_dir):
    """After the start-up trials, two claims before either reports: TPE's constant liar sees
    the first as pending, and the seed per trial number keeps the streams apart."""
    cfg, study = _study(tmp_path, demo_dir, "tpe")
    for _ in range(4):
        (trial,), _ = claim_trials(study, cfg, 1)
        study.tell(trial, _score(trial.params))
    (a,), _ = claim_trials(study, cfg, 1, worker="w0")
    (b,), _ = claim_trials(study, cfg, 1, worker="w1")
    assert a.params != b.params


@pytest.mark.parametrize("sampler", ["tpe", "random"])
def test_a_restarted_study_does_not_repeat_its_first_points(tmp_path, demo_dir, sampler):
    """A process restarted on the study builds its sampler again with the study's seed: its
    first proposals must not be the study's first trials once more."""
    cfg, study = _study(tmp_path, demo_dir, sampler)
    first = []
    for _ in range(3):
        (trial,), _ = claim_trials(study, cfg, 1)
        first.append(trial.params)
        study.tell(trial, _score(trial.params))
    again = open_study(cfg)  # the restarted process's view of the same study
    for _ in range(3):
        (trial,), _ = claim_trials(again, cfg, 1)
        assert trial.params not in first
        again.tell(trial, _score(trial.params))

"""Start from what you know: points in the study file (or `hpsearch enqueue`) run first."""

from __future__ import annotations

import pytest
from conftest import cli, study_config, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.config import ConfigError

HF_DEFAULTS = {"learning_rate": 5e-5, "weight_decay": 0.01}
SPACE = {"learning_rate": {"type": "float", "low": 1e-5, "high": 1e-2, "log": True},
         "weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True}}


def test_the_study_files_points_are_queued_once_however_often_it_runs(tmp_path, demo_dir):
    from hpsearch.study import start_study

    cfg = study_config(tmp_path, demo_dir, search_space=SPACE, enqueue=[HF_DEFAULTS])
    for _ in range(3):
        study = start_study(cfg)
    (t,) = study.get_trials(deepcopy=False)
    assert t.state == TrialState.WAITING and t.number == 0
    assert t.system_attrs["fixed_params"] == HF_DEFAULTS
    assert t.user_attrs["enqueued"] == "study file"
    from hpsearch.plots import trial_notes

    assert "enqueued (study file)" in trial_notes(t)  # the report's trial table says so


@pytest.mark.parametrize("point,message", [
    ({"learning_rate": 0.5}, r"enqueue\[0\]\.learning_rate: 0\.5 is outside"),
    ({"dropout": 0.1}, r"enqueue\[0\]\.dropout: not in the search space"),
])
def test_a_point_outside_the_space_is_one_error_line(tmp_path, demo_dir, point, message):
    with pytest.raises(ConfigError, match=message):
        study_config(tmp_path, demo_dir, search_space=SPACE, enqueue=[point])


@pytest.mark.slow
def test_an_enqueued_point_is_trial_0_and_counts_toward_n_trials(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=2, search_space=SPACE,
                       enqueue=[HF_DEFAULTS])
    r = cli("run", str(path))
    assert r.exit_code == 0, r.stderr
    trials = trials_of(path)
    assert len(trials) == 2 and trials[0].params == HF_DEFAULTS
    assert trials[0].user_attrs["enqueued"] == "study file"
    assert "enqueued" not in trials[1].user_attrs

"""A new study checks its model and data before it writes anything (hpsearch/preflight.py)."""

from __future__ import annotations

import optuna
import pytest
from conftest import cli, study_config, write_study


@pytest.mark.slow
def test_a_model_typo_writes_nothing_and_the_fixed_file_then_runs_without_allow_changes(
        tmp_path, demo_dir):
    bad = write_study(tmp_path, demo_dir, n_trials=1, trainer={"model": "package:nosuchpkg"})
    r = cli("run", str(bad))
    assert r.exit_code == 2
    assert r.stderr.strip().splitlines() == [
        "error: trainer.model: Python package 'nosuchpkg' is not installed"]
    assert not (tmp_path / "out").exists()  # no study.db, no folder
    fixed = write_study(tmp_path, demo_dir, n_trials=1)
    r = cli("run", str(fixed))
    assert r.exit_code == 0, r.stderr
    assert "1/1 trials" in r.stdout


def test_a_broken_data_file_is_reported_before_the_study_is_created(tmp_path, demo_dir):
    import shutil

    from hpsearch.errors import DataError
    from hpsearch.study import start_study

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    tags = data / "train" / "tags.txt"
    lines = tags.read_text().splitlines()
    tags.write_text("\n".join(["B-PER NOT-A-TAG", *lines[1:]]) + "\n")
    cfg = study_config(tmp_path, data)
    with pytest.raises(DataError, match="tags.txt:1"):
        start_study(cfg)
    assert not (tmp_path / "out").exists()


def test_a_study_that_never_ran_a_trial_takes_a_changed_file(tmp_path, demo_dir):
    from hpsearch.errors import ConfigError
    from hpsearch.study import start_study

    start_study(study_config(tmp_path, demo_dir))
    wider = {"learning_rate": {"type": "float", "low": 1e-6, "high": 1e-1, "log": True}}
    study = start_study(study_config(tmp_path, demo_dir, search_space=wider))
    study.add_trial(optuna.trial.create_trial(value=0.5, params={}, distributions={}))
    with pytest.raises(ConfigError, match="was run with other settings"):
        start_study(study_config(tmp_path, demo_dir))

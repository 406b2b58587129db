"""A new study checks its model and data before it writes anything (hpsearch/preflight.py)."""

from __future__ import annotations

import socket
import time

import optuna
import pytest
from conftest import hpsearch, study_config, write_study


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_a_model_typo_writes_nothing_and_the_fixed_file_then_runs_without_allow_changes(
        tmp_path, demo_dir):
    bad = write_study(tmp_path, demo_dir, n_trials=1, trainer={"model": "package:nosuchpkg"})
    r = hpsearch("run", str(bad))
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: trainer.model: Python package 'nosuchpkg' is not installed"]
    assert not (tmp_path / "out").exists()  # no study.db, no folder
    fixed = write_study(tmp_path, demo_dir, n_trials=1)
    r = hpsearch("run", str(fixed))
    assert r.returncode == 0, r.stderr
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


@pytest.mark.slow
@pytest.mark.parametrize("offline", [False, True])
def test_an_unknown_hub_model_without_the_hub_fails_in_seconds_in_one_line(
        tmp_path, demo_dir, offline):
    path = write_study(tmp_path, demo_dir, trainer={"model": "no-such-org/no-such-model"})
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}", "HF_HOME": str(tmp_path / "hf")}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    t0 = time.perf_counter()
    r = hpsearch("run", str(path), env=env)
    assert time.perf_counter() - t0 < 10
    assert r.returncode == 2
    (line,) = r.stderr.strip().splitlines()
    assert "no-such-org/no-such-model" in line
    assert ("HF_HUB_OFFLINE" if offline else "cannot be reached") in line
    assert not (tmp_path / "out").exists()

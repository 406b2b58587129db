"""One study name, two different searches: refused before any trial starts, with the differences."""

from __future__ import annotations

import pytest
import yaml
from conftest import ONE_EPOCH, cli, trials_of, write_study
from optuna.trial import TrialState

# Every test runs a study before changing it.
pytestmark = pytest.mark.slow


def test_two_study_files_one_study_name_different_spaces_is_refused(tmp_path, demo_dir):
    first = write_study(tmp_path, demo_dir, n_trials=1, trainer=ONE_EPOCH)
    assert cli("run", str(first)).exit_code == 0
    d = yaml.safe_load(first.read_text())
    d["search_space"]["warmup_ratio"] = {"type": "float", "low": 0.0, "high": 0.2}
    second = tmp_path / "other.yaml"
    second.write_text(yaml.safe_dump({**d, "n_trials": 3}))

    r = cli("run", str(second))
    assert r.exit_code == 2
    msg = r.stderr.strip()
    assert msg.count("\n") == 0 and "study 't' was run with other settings" in msg
    assert "search_space.warmup_ratio" in msg
    # Nothing started, nothing lost.
    assert [t.state for t in trials_of(first)] == [TrialState.COMPLETE]


def test_edited_study_file_is_refused_unless_allow_changes(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=1, trainer=ONE_EPOCH)
    assert cli("run", str(path)).exit_code == 0
    d = yaml.safe_load(path.read_text())
    d["n_trials"] = 2
    d["search_space"]["learning_rate"]["high"] = 0.05
    d["trainer"]["max_epochs"] = 2
    path.write_text(yaml.safe_dump(d))

    r = cli("run", str(path))
    assert r.exit_code == 2
    assert "search_space.learning_rate.high: 0.01 -> 0.05" in r.stderr
    assert "trainer.max_epochs: 1 -> 2" in r.stderr
    assert len(trials_of(path)) == 1

    r = cli("run", str(path), "--allow-changes")
    assert r.exit_code == 0, r.output
    assert [t.state for t in trials_of(path)] == [TrialState.COMPLETE] * 2


def test_a_changed_backend_is_refused_and_n_trials_timeout_storage_change_freely(
        tmp_path, demo_dir, monkeypatch):
    import shutil

    path = write_study(tmp_path, demo_dir, n_trials=1, trainer=ONE_EPOCH)
    assert cli("run", str(path)).exit_code == 0
    d = yaml.safe_load(path.read_text())

    path.write_text(yaml.safe_dump({**d, "backend": {"name": "bayes"}}))
    r = cli("run", str(path))
    assert r.exit_code == 2 and "backend.name: 'optuna' -> 'bayes'" in r.stderr
    assert len(trials_of(path)) == 1

    # More trials, a time budget, and the database moved: the same study, no questions asked.
    moved = tmp_path / "moved.db"
    shutil.copy(tmp_path / "out" / "study.db", moved)
    path.write_text(yaml.safe_dump({**d, "n_trials": 2, "timeout": 3600,
                                    "storage": f"sqlite:///{moved}"}))
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    assert [t.state for t in trials_of(path)] == [TrialState.COMPLETE] * 2  # moved.db's

    # HPSEARCH_STORAGE wins over the file's storage.
    elsewhere = tmp_path / "env.db"
    monkeypatch.setenv("HPSEARCH_STORAGE", f"sqlite:///{elsewhere}")
    path.write_text(yaml.safe_dump({**d, "n_trials": 1, "storage": f"sqlite:///{moved}"}))
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    assert len(trials_of(path)) == 1  # env.db: a study of its own
    monkeypatch.delenv("HPSEARCH_STORAGE")
    assert len(trials_of(path)) == 2  # moved.db untouched
    assert elsewhere.exists()

"""`hpsearch run` end to end: real trainer trials written to a real SQLite study database."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import NO_DROPOUT, cli, hpsearch, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.config import load_study

# Every test runs real trials through the command line.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished(tmp_path_factory, demo_dir):
    tmp = tmp_path_factory.mktemp("run")
    path = write_study(tmp, demo_dir, n_trials=3)
    r = hpsearch("run", str(path))
    assert r.returncode == 0, r.stderr
    return path, r


def test_run_writes_complete_trials(finished):
    path, r = finished
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    for t in trials:
        assert 0.0 <= t.value <= 1.0
        assert set(t.params) == {"learning_rate", "weight_decay"}
        assert t.intermediate_values  # reported while training
        assert t.value == max(t.intermediate_values.values())  # best seen, not last
        assert t.user_attrs["steps"] > 0 and "per_type" in t.user_attrs["best_scores"]
    assert "3/3 trials" in r.stdout and "best trial #" in r.stdout
    for t in trials:
        assert f"trial {t.number:>3}" in r.stdout


def test_second_run_starts_nothing_and_more_trials_run_exactly_more(finished, tmp_path):
    path, _ = finished
    r = cli("run", str(path))
    assert r.exit_code == 0 and "nothing to do" in r.stdout
    assert len(trials_of(path)) == 3
    d = yaml.safe_load(path.read_text())
    d["n_trials"] = 5
    path.write_text(yaml.safe_dump(d))
    r = cli("run", str(path))
    assert r.exit_code == 0, r.stderr
    trials = trials_of(path)
    assert len(trials) == 5 and all(t.state == TrialState.COMPLETE for t in trials)
    assert "5/5 trials" in r.stdout


def test_best_and_status_show_the_best_trial_in_the_database(finished):
    path, _ = finished
    best = max(trials_of(path), key=lambda t: t.value)
    r = cli("best", str(path), "--json")
    assert r.exit_code == 0
    got = json.loads(r.stdout)
    assert got["number"] == best.number and got["value"] == pytest.approx(best.value)
    assert got["params"] == pytest.approx(best.params)
    r = cli("status", str(path))
    assert r.exit_code == 0 and f"best #{best.number}" in r.stdout
    assert r.stdout.count("COMPLETE") == len(trials_of(path))


def test_best_model_loads_with_plain_transformers(finished):
    """The exported folder needs no hpsearch, and scores what the study reported."""
    path, _ = finished
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    cfg = load_study(path)
    folder = cfg.out / "best-model"
    model = AutoModelForTokenClassification.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    assert model.config.id2label[0] == "O" and tok.is_fast
    marker = json.loads((folder / "hpsearch-trial.json").read_text())
    best = max(trials_of(path), key=lambda t: t.value)
    assert marker["number"] == best.number
    r = cli("evaluate", str(path), "--split", "val", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["f1"] == pytest.approx(best.value, abs=1e-9)


def test_study_file_changed_between_runs_is_refused(finished):
    path, _ = finished
    d = yaml.safe_load(path.read_text())
    d["search_space"]["learning_rate"]["high"] = 0.5
    changed = path.with_name("changed.yaml")
    changed.write_text(yaml.safe_dump(d))
    r = cli("run", str(changed))
    assert r.exit_code == 2
    assert "search_space.learning_rate.high: 0.01 -> 0.5" in r.stderr


def test_bayes_backend_writes_the_same_database(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=4,
                       backend={"name": "bayes", "acquisition": "ei", "n_random_init": 2},
                       trainer={"max_epochs": 1})
    r = cli("run", str(path))
    assert r.exit_code == 0, r.stderr
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
    sampled_by = [t.system_attrs.get("hpsearch:sampled_by") for t in trials]
    assert sampled_by[:2] == ["bayes_opt:random_init"] * 2
    assert sampled_by[2:] == ["bayes_opt"] * 2
    assert all(t.intermediate_values for t in trials)


def test_keep_best_leaves_only_the_best_trials_weights(finished):
    """A long study must not fill the disk: after each trial only the best weights remain."""
    path, _ = finished
    cfg = load_study(path)
    best = max(trials_of(path, states=(TrialState.COMPLETE,)), key=lambda t: t.value)
    trial_dirs = sorted((cfg.out / "trials").iterdir())
    assert len(trial_dirs) == len(trials_of(path))
    for d in trial_dirs:
        assert not (d / "checkpoints").exists(), f"{d.name} kept its checkpoints"
        has_best = (d / "best" / "model.safetensors").exists()
        assert has_best == (d.name == f"trial-{best.number:04d}"), d.name
        assert (d / "metrics.jsonl").exists() and (d / "train.log").exists()
    assert (cfg.out / "best-model" / "model.safetensors").exists()


def test_keep_all_keeps_every_checkpoint(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=2, keep="all",
                       trainer={"max_epochs": 2, "train_limit": 100, "val_limit": 50})
    r = cli("run", str(path))
    assert r.exit_code == 0, r.stderr
    dirs = sorted((tmp_path / "out" / "trials").iterdir())
    assert len(dirs) == 2
    for d in dirs:
        assert (d / "best" / "model.safetensors").exists()
        assert any((d / "checkpoints").iterdir())


def test_a_pretrained_folder_loads_quietly_and_the_trial_log_says_what_is_new(tmp_path,
                                                                              demo_dir):
    """transformers prints a table of unloaded weights for every model it loads; once per
    trial that buries the trial lines. The trial's train.log says it in one line instead."""
    from transformers import BertConfig, BertModel

    from hpsearch.config import ScratchModel
    from hpsearch.trainer.data import read_data
    from hpsearch.trainer.modeling import train_wordpiece

    sents = read_data(demo_dir).splits["train"].sentences
    folder = tmp_path / "tiny-bert"  # an encoder without a head, as checkpoints on the hub are
    tok = train_wordpiece(sents, ScratchModel(vocab_size=600), tmp_path / "tok")
    tok.save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    path = write_study(tmp_path, demo_dir, n_trials=1,
                       trainer={"model": str(folder), "train_limit": 100, "val_limit": 40,
                                "max_epochs": 1})
    r = hpsearch("run", str(path))
    assert r.returncode == 0, r.stderr
    assert "LOAD REPORT" not in r.stdout + r.stderr and "MISSING" not in r.stderr
    (t,) = trials_of(path)
    log = (tmp_path / "out" / "trials" / "trial-0000" / "train.log").read_text()
    assert f"loaded {folder}; newly initialised: classifier.bias, classifier.weight;" in log
    assert t.state == TrialState.COMPLETE


@pytest.mark.skipif(__import__("shutil").which("cc") is None,
                    reason="torch.compile on a CPU needs a C compiler")
def test_compiled_kernels_are_kept_in_the_study_cache(tmp_path, demo_dir):
    """A compiling study keeps inductor's cache beside its tokenised data, so the next trial
    and a run after a restart reuse the compiled graphs instead of compiling again."""
    path = write_study(tmp_path, demo_dir, n_trials=1,
                       trainer={"compile": True, "fast_path": "on", "buckets": [32],
                                "batch_size": 16, "train_limit": 48, "val_limit": 20,
                                "max_epochs": 1, "max_length": 32,  # one shape: one compile
                                **NO_DROPOUT})  # no dropout masks in it: a smaller graph
    r = hpsearch("run", str(path))
    assert r.returncode == 0, r.stderr
    log = (tmp_path / "out" / "trials" / "trial-0000" / "train.log").read_text()
    assert "torch.compile" in log and "compile failed" not in log
    cache = tmp_path / "out" / "cache" / "inductor"
    assert cache.is_dir() and any(f.is_file() for f in cache.rglob("*"))

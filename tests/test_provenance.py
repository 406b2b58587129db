"""Every trial says what it was trained on and with; a study is not continued on other data."""

from __future__ import annotations

import shutil

import optuna
import pytest
from conftest import ONE_EPOCH, cli, study_config, trials_of, write_study
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from hpsearch import provenance
from hpsearch.attrs import A_PROVENANCE
from hpsearch.errors import ConfigError

#: What every trial carries besides its data fingerprint.
RECORDED = ("model_source", "model_hash", "hpsearch_version", "hpsearch_commit", "hpsearch_dirty",
            "torch_version", "transformers_version", "optuna_version", "bayes_opt_version",
            "seqeval_version", "device", "cuda_version", "cudnn_version", "host")


@pytest.mark.slow
def test_an_edited_sentence_is_refused_in_one_line_and_allowed_with_both_fingerprints_kept(
        tmp_path, demo_dir):
    data = shutil.copytree(demo_dir, tmp_path / "data")  # the shared fixture stays as it is
    path = write_study(tmp_path, data, n_trials=1, trainer=ONE_EPOCH)
    assert cli("run", str(path)).exit_code == 0
    sentences = data / "train" / "sentences.txt"
    lines = sentences.read_text(encoding="utf-8").split("\n")
    lines[0] = lines[0].replace(lines[0].split()[0], "Zanzibar", 1)
    sentences.write_text("\n".join(lines), encoding="utf-8")

    r = cli("run", str(path), "--n-trials", "2")
    assert r.exit_code == 2
    msg = r.stderr.strip()
    assert msg.count("\n") == 0, msg
    assert "was run with other data" in msg and "data fingerprint" in msg
    assert "(train/sentences.txt)" in msg and "--allow-changes" in msg
    assert len(trials_of(path)) == 1  # nothing started

    r = cli("run", str(path), "--n-trials", "2", "--allow-changes")
    assert r.exit_code == 0, r.output
    trials = trials_of(path)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    prints = [t.user_attrs[A_PROVENANCE]["data_fingerprint"] for t in trials]
    assert prints[0] != prints[1] and all(prints)
    assert prints[0] in msg and prints[1] in msg
    for t in trials:
        rec = t.user_attrs[A_PROVENANCE]
        assert set(RECORDED) <= set(rec)
        assert rec["model_source"] == "scratch" and rec["model_hash"]
        assert rec["torch_version"] and rec["optuna_version"] and rec["host"]
        assert rec["device"].startswith("cpu")  # the study trains on device: cpu
    assert trials[0].user_attrs[A_PROVENANCE]["model_hash"] == \
        trials[1].user_attrs[A_PROVENANCE]["model_hash"]
    # The new data is the study's now: the next run goes on without the flag.
    assert cli("run", str(path), "--n-trials", "2").exit_code == 0

    r = cli("status", str(path), "--trial", "0")
    assert r.exit_code == 0, r.output
    shown = dict(line.split(": ", 1) for line in r.stdout.splitlines())
    assert shown["trial"] == "0" and shown["state"] == "COMPLETE"
    assert "learning_rate" in shown and "f1" in shown
    assert shown["data_fingerprint"] == prints[0]
    assert set(RECORDED) <= set(shown)
    r = cli("status", str(path), "--trial", "7")
    assert r.exit_code == 2 and "has no trial 7" in r.stderr


def test_the_fingerprint_is_the_data_hash_of_the_features_cache(tmp_path, demo_dir):
    from hpsearch.trainer.data import read_data

    cfg = study_config(tmp_path, demo_dir)
    got = provenance.data_fingerprint(cfg)
    assert got["fingerprint"] == read_data(demo_dir).fingerprint()
    assert {"train/sentences.txt", "train/tags.txt", "val/sentences.txt"} <= set(got["files"])


def _model_folder(tmp_path, weights: bytes):
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "bert"}')
    (folder / "model.safetensors").write_bytes(weights)
    (folder / "notes.md").write_text("not part of the model")
    return folder


def _a_study_with_a_trial() -> optuna.Study:
    study = optuna.create_study()
    study.add_trial(create_trial(value=0.5, params={"learning_rate": 1e-3},
                                 distributions={"learning_rate": FloatDistribution(1e-4, 1e-2)}))
    return study


def test_changed_weights_in_a_model_folder_are_refused_and_hashed_once(tmp_path, demo_dir,
                                                                       monkeypatch):
    from hpsearch.study import check_unchanged

    folder = _model_folder(tmp_path, b"\x00" * 4096)
    cfg = study_config(tmp_path, demo_dir, trainer={"model": str(folder)})
    study = _a_study_with_a_trial()
    check_unchanged(study, cfg, allow_changes=False)  # the first run records it
    first = provenance.study_inputs(cfg)["model"]
    assert first["source"] == str(folder) and set(first["files"]) == {"config.json",
                                                                       "model.safetensors"}

    hashed = []
    real = provenance.stream_hash
    monkeypatch.setattr(provenance, "stream_hash", lambda p, *m: hashed.append(p.name)
                        or real(p, *m))
    monkeypatch.setattr(provenance, "_FILE_CACHE", {})  # as a new process: the disk cache serves
    assert provenance.model_hash(cfg)["hash"] == first["hash"]
    assert "model.safetensors" not in hashed

    (folder / "model.safetensors").write_bytes(b"\x01" * 4096)  # same size, other bytes
    with pytest.raises(ConfigError) as e:
        check_unchanged(study, cfg, allow_changes=False)
    assert "was run with other model" in str(e.value)
    assert "model hash" in str(e.value) and "(model.safetensors)" in str(e.value)
    check_unchanged(study, cfg, allow_changes=True)
    check_unchanged(study, cfg, allow_changes=False)  # recorded: no longer a change


def test_the_commit_is_that_of_a_checkout_holding_hpsearch_only(tmp_path):
    assert provenance.git_commit(tmp_path) == (None, None)
    here = provenance.git_commit(provenance.Path(provenance.__file__).parent)
    if shutil.which("git") and here[0] is not None:
        assert len(here[0]) == 40 and isinstance(here[1], bool)


def test_the_report_shows_the_short_hashes_and_the_whole_record_on_hover(tmp_path, demo_dir):
    from hpsearch.plots.html import trial_table_html

    rec = {"data_fingerprint": "5b75b7c7eeacd426", "model_source": "scratch",
           "model_hash": "b848889205da11b5", "hpsearch_version": "0.1.0",
           "hpsearch_commit": "1dd041f9b93635196e162b97359cb0028d62e21c", "hpsearch_dirty": True,
           "host": "vm"}
    dist = {"learning_rate": FloatDistribution(1e-4, 1e-2)}
    trials = [create_trial(value=0.5, params={"learning_rate": 1e-3}, distributions=dist,
                           user_attrs={A_PROVENANCE: rec}),
              create_trial(value=0.4, params={"learning_rate": 2e-3}, distributions=dist)]
    page = trial_table_html(trials, study_config(tmp_path, demo_dir))
    assert "<th title=" in page and ">provenance</th>" in page
    assert "data 5b75b7c7 · model b8488892 · 0.1.0@1dd041f+dirty" in page
    assert 'title="data_fingerprint: 5b75b7c7eeacd426\nmodel_source: scratch' in page
    assert page.count("<tr") == 3  # the trial without a record keeps its row


def test_a_study_from_before_provenance_has_no_provenance_column(tmp_path, demo_dir):
    from hpsearch.plots.html import trial_table_html

    t = create_trial(value=0.5, params={"learning_rate": 1e-3},
                     distributions={"learning_rate": FloatDistribution(1e-4, 1e-2)})
    assert "provenance" not in trial_table_html([t], study_config(tmp_path, demo_dir))


def test_status_of_a_trial_from_before_provenance_says_it_was_not_recorded(tmp_path, demo_dir):
    from hpsearch.config import load_study
    from hpsearch.opening import open_study

    path = write_study(tmp_path, demo_dir)
    cfg = load_study(path)
    study = open_study(cfg, create=True)
    study.add_trial(create_trial(value=0.5, params={"learning_rate": 1e-3},
                                 distributions={"learning_rate": FloatDistribution(1e-4, 1e-2)}))
    r = cli("status", str(path), "--trial", "0")
    assert r.exit_code == 0, r.output
    assert "provenance: not recorded" in r.stdout.splitlines()

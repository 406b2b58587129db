"""A trial that raises or diverges fails alone: its reason is stored, the study goes on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import ONE_EPOCH, cli, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.config import ScratchModel
from hpsearch.trainer.data import read_data
from hpsearch.trainer.modeling import train_wordpiece


def _short_context_model(tmp_path: Path, data_dir: Path) -> Path:
    """A real local HF folder whose position table is shorter than the study's windows."""
    from transformers import BertConfig, BertForTokenClassification

    sents = read_data(data_dir).splits["train"].sentences
    tok = train_wordpiece(sents, ScratchModel(vocab_size=600), tmp_path / "tok")
    folder = tmp_path / "short-bert"
    tok.save_pretrained(folder)
    config = BertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=8)
    BertForTokenClassification(config).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_a_trial_that_raises_fails_with_its_traceback_and_the_study_goes_on(tmp_path, demo_dir):
    folder = _short_context_model(tmp_path, demo_dir)
    path = write_study(tmp_path, demo_dir, n_trials=2,
                       trainer={**ONE_EPOCH, "model": str(folder), "max_length": 64})
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    ts = trials_of(path)
    assert [t.state for t in ts] == [TrialState.FAIL] * 2  # the second ran after the first failed
    for t in ts:
        assert t.system_attrs["hpsearch:fail_reason"] == "error"
        assert "must match the existing size" in t.user_attrs["error"]
        assert "Traceback (most recent call last)" in t.user_attrs["traceback"]
        assert "FAIL (error)" in r.output

    status = cli("status", str(path))
    assert status.exit_code == 0
    fail_rows = [ln for ln in status.output.splitlines() if " FAIL " in ln]
    assert len(fail_rows) == 2 and all("error: RuntimeError" in ln for ln in fail_rows)


@pytest.mark.slow
def test_a_diverging_trial_stops_with_reason_nan_loss(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir, n_trials=2,
                       trainer={**ONE_EPOCH, "max_grad_norm": None})
    d = yaml.safe_load(path.read_text())
    d["search_space"]["learning_rate"] = {"type": "float", "low": 1e5, "high": 1e7, "log": True}
    path.write_text(yaml.safe_dump(d))
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    ts = trials_of(path)
    assert [t.state for t in ts] == [TrialState.FAIL] * 2
    for t in ts:
        assert t.system_attrs["hpsearch:fail_reason"] == "nan_loss"
        assert "not finite" in t.user_attrs["error"]
    assert r.output.count("FAIL (nan_loss)") == 2
    status = cli("status", str(path))
    assert status.output.count("nan_loss") == 2


def test_a_model_that_cannot_be_found_is_one_line_before_any_trial(tmp_path, demo_dir):
    path = write_study(tmp_path, demo_dir,
                       trainer={**ONE_EPOCH, "model": str(tmp_path / "no-such-model")})
    r = cli("run", str(path))
    assert r.exit_code == 2
    msg = r.stderr.strip()
    assert msg.count("\n") == 0 and "no-such-model" in msg, msg
    assert not (tmp_path / "out").exists()  # checked before the study was even created


def test_a_model_folder_without_tokenizer_is_one_line_before_any_trial(tmp_path, demo_dir):
    folder = _short_context_model(tmp_path, demo_dir)
    for f in folder.iterdir():
        if "token" in f.name or f.name in ("vocab.txt", "special_tokens_map.json"):
            f.unlink()
    path = write_study(tmp_path, demo_dir, trainer={**ONE_EPOCH, "model": str(folder)})
    r = cli("run", str(path))
    assert r.exit_code == 2
    msg = r.stderr.strip()
    assert msg.count("\n") == 0 and str(folder) in msg, msg
    assert trials_of(path) == []

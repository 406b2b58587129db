"""The shipped study files are valid, search in log space, and name the real models."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.config import load_study

STUDIES = sorted((Path(__file__).resolve().parents[1] / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_study_file_is_valid(path, monkeypatch, tmp_path):
    monkeypatch.setenv("HPSEARCH_DATA", str(tmp_path))  # real data may be absent here
    cfg = load_study(path)
    for name in ("learning_rate", "weight_decay"):
        assert cfg.search_space[name].log is True


def test_real_studies_name_hub_models(monkeypatch, tmp_path):
    monkeypatch.setenv("HPSEARCH_DATA", str(tmp_path))
    monkeypatch.delenv("HPSEARCH_MODEL", raising=False)
    studies = {p.stem: load_study(p) for p in STUDIES}
    assert studies["msra-bert"].trainer.model == "bert-base-chinese"
    assert studies["conll03-bert"].trainer.model == "bert-base-cased"
    monkeypatch.setenv("HPSEARCH_MODEL", "/models/local-bert")
    assert load_study(STUDIES[[p.stem for p in STUDIES].index("msra-bert")]).trainer.model == (
        "/models/local-bert"
    )

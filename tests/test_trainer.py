"""The trial trainer is real: it learns the demo data, it is reproducible, it reads real data."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import SHARED_DATA, hpsearch

from hpsearch.config import ScratchModel, TrainerConfig
from hpsearch.trainer import prepare, train
from hpsearch.trainer.loop import lr_at

TINY = ScratchModel(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=64, vocab_size=800)


def _cfg(data_dir: Path, **kw) -> TrainerConfig:
    base = dict(data_dir=str(data_dir), scratch=TINY, train_limit=300, val_limit=100,
                max_epochs=2, max_tokens=1024, precision="fp32", device="cpu", num_threads=1,
                progress=False, seed=0, learning_rate=3e-3)
    return TrainerConfig(**{**base, **kw})


def test_same_seed_same_params_same_f1(demo_dir, tmp_path):
    cfg = _cfg(demo_dir)
    prep = prepare(cfg, demo_dir, tmp_path / "cache")
    a = train(cfg, prep, tmp_path / "a")
    b = train(cfg, prep, tmp_path / "b")
    assert a.value == b.value and a.history == b.history
    c = train(_cfg(demo_dir, seed=1), prep, tmp_path / "c")
    assert c.history != a.history


def test_outputs_of_a_trial(demo_dir, tmp_path):
    import json

    cfg = _cfg(demo_dir, eval_every=5)
    r = train(cfg, prepare(cfg, demo_dir, tmp_path / "cache"), tmp_path / "t")
    rows = [json.loads(x) for x in (tmp_path / "t" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in rows if x.get("eval")]
    assert [x["step"] for x in evals] == [s for s, _ in r.history]
    assert {"val_f1", "val_precision", "val_recall", "val_accuracy", "val_loss"} <= set(evals[0])
    steps = [x for x in rows if "loss" in x]
    assert {"lr", "grad_norm", "tokens_per_s"} <= set(steps[0])
    assert "val f1" in (tmp_path / "t" / "train.log").read_text()
    assert r.value == max(v for _, v in r.history)


def test_second_preparation_comes_from_cache(demo_dir, tmp_path):
    from hpsearch.trainer import inputs

    cfg = _cfg(demo_dir, train_limit=250)
    inputs._MEMO.clear()
    first = prepare(cfg, demo_dir, tmp_path / "cache")
    inputs._MEMO.clear()
    second = prepare(cfg, demo_dir, tmp_path / "cache")
    third = prepare(cfg, demo_dir, tmp_path / "cache")
    assert (first.source, second.source, third.source) == ("built", "disk cache", "memory")
    assert third.seconds < 0.01


def test_schedules():
    cfg = TrainerConfig(data_dir="demo", learning_rate=1.0, warmup_ratio=0.1)
    assert lr_at(0, cfg, 100, 10) < lr_at(9, cfg, 100, 10) <= 1.0
    assert lr_at(10, cfg, 100, 10) == 1.0 and lr_at(99, cfg, 100, 10) < 0.02
    cos = cfg.model_copy(update={"schedule": "cosine"})
    assert lr_at(55, cos, 100, 10) == pytest.approx(0.5)
    const = cfg.model_copy(update={"schedule": "constant"})
    assert lr_at(99, const, 100, 10) == 1.0


def test_demo_f1_depends_on_learning_rate(tmp_path):
    """The demo's promise: a good learning rate gets F1 > 0.8, a tiny one stays near 0."""
    demo = Path(__file__).resolve().parents[1] / "studies" / "demo.yaml"
    env = {"HPSEARCH_STORAGE": f"sqlite:///{tmp_path / 'x.db'}"}
    out = str(tmp_path / "demo-out")
    good = hpsearch("train", str(demo), "--set", "learning_rate=5e-3", "--set",
                    "weight_decay=0.01", "--out", out + "-good", env=env)
    assert good.returncode == 0, good.stderr
    bad = hpsearch("train", str(demo), "--set", "learning_rate=1e-5", "--out", out + "-bad",
                   env=env)
    f1 = [float(r.stdout.split("best f1=")[1].split()[0]) for r in (good, bad)]
    assert f1[0] > 0.8 and f1[1] < 0.1, f1
    assert "micro avg" in good.stdout and "PER" in good.stdout


@pytest.mark.skipif(not (SHARED_DATA / "msra").is_dir(), reason="../shared/data/msra absent")
def test_trains_on_real_chinese_data(tmp_path):
    """A slice of MSRA, a scratch BERT over characters: the trainer is not demo-only."""
    cfg = TrainerConfig(
        data_dir=str(SHARED_DATA / "msra"), train_limit=4000, val_limit=300, max_epochs=4,
        max_tokens=1024, max_length=64, precision="fp32", device="cpu", num_threads=1,
        progress=False, seed=0, learning_rate=5e-3, warmup_ratio=0.05,
        scratch=ScratchModel(hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=128, vocab_size=3000),
    )
    prep = prepare(cfg, SHARED_DATA / "msra", tmp_path / "cache")
    assert len(prep.val_gold) == 300
    r = train(cfg, prep, tmp_path / "t")
    # A from-scratch character model on 4,000 sentences: far from SOTA, far above chance (0).
    assert r.value > 0.2, r.history

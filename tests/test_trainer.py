"""The trial trainer is real: it learns the demo data, it is reproducible, it reads real data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED_DATA, TINY, cli, write_study

from hpsearch.config import ScratchModel, TrainerConfig
from hpsearch.trainer import prepare, train
from hpsearch.trainer.optim import lr_at


def _cfg(data_dir: Path, **kw) -> TrainerConfig:
    """One trial's trainer as a quick study gives it, seed and learning rate already drawn."""
    return TrainerConfig(**{**TINY, "data_dir": str(data_dir), "seed": 0, "learning_rate": 3e-3,
                            **kw})


@pytest.mark.slow
def test_same_seed_same_params_same_f1(demo_dir, tmp_path):
    cfg = _cfg(demo_dir)
    prep = prepare(cfg, demo_dir, tmp_path / "cache")
    a = train(cfg, prep, tmp_path / "a")
    b = train(cfg, prep, tmp_path / "b")
    assert a.value == b.value and a.history == b.history
    c = train(_cfg(demo_dir, seed=1), prep, tmp_path / "c")
    assert c.history != a.history


def test_a_trial_logs_every_step_and_evaluation_and_returns_its_best_f1(demo_dir, tmp_path):
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
    # The disk cache is read without parsing the data again, and gives back the same things.
    assert second.labels == first.labels and second.val_gold == first.val_gold
    assert np.array_equal(second.train.ids, first.train.ids)
    assert second.tokenizer.get_vocab() == first.tokenizer.get_vocab()


def test_lr_warms_up_then_decays_linearly_or_by_cosine_or_stays_constant():
    cfg = TrainerConfig(data_dir="demo", learning_rate=1.0, warmup_ratio=0.1)
    assert lr_at(0, cfg, 100, 10) < lr_at(9, cfg, 100, 10) <= 1.0
    assert lr_at(10, cfg, 100, 10) == 1.0 and lr_at(99, cfg, 100, 10) < 0.02
    cos = cfg.model_copy(update={"schedule": "cosine"})
    assert lr_at(55, cos, 100, 10) == pytest.approx(0.5)
    const = cfg.model_copy(update={"schedule": "constant"})
    assert lr_at(99, const, 100, 10) == 1.0


@pytest.mark.slow
def test_demo_f1_depends_on_learning_rate(tmp_path):
    """The demo's promise: a good learning rate gets F1 > 0.8, a tiny one stays near 0."""
    demo = Path(__file__).resolve().parents[1] / "studies" / "demo.yaml"
    env = {"HPSEARCH_STORAGE": f"sqlite:///{tmp_path / 'x.db'}"}
    out = str(tmp_path / "demo-out")
    good = cli("train", str(demo), "--set", "learning_rate=5e-3", "--set", "weight_decay=0.01",
               "--out", out + "-good", env=env)
    assert good.exit_code == 0, good.stderr
    bad = cli("train", str(demo), "--set", "learning_rate=1e-5", "--out", out + "-bad", env=env)
    f1 = [float(r.stdout.split("best f1=")[1].split()[0]) for r in (good, bad)]
    assert f1[0] > 0.8 and f1[1] < 0.1, f1
    assert "micro avg" in good.stdout and "PER" in good.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "msra").is_dir(), reason="../shared/data/msra absent")
def test_scratch_model_learns_real_chinese_data_to_f1_above_0_2(tmp_path):
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


def _logged_data(log: Path) -> tuple[float, str]:
    """The data line every train.log has: ``data 0.01s (memory)``."""
    import re

    m = re.search(r" data (\d+\.\d+)s \(([a-z ]+)\)", log.read_text())
    assert m, log.read_text()[:2000]
    return float(m.group(1)), m.group(2)


@pytest.mark.slow
def test_trial_one_builds_the_data_later_trials_skip_it(demo_dir, tmp_path):
    """A study tokenises once: trial 2 logs well under a second of data work, as does a new
    process, which reads the disk cache instead of tokenising again."""
    from hpsearch.config import load_study
    from hpsearch.study import run
    from hpsearch.trainer import inputs
    from hpsearch.trainer.trial_dir import trial_dir

    path = write_study(tmp_path, demo_dir, n_trials=2,
                       trainer={"max_epochs": 1, "train_limit": 200, "val_limit": 50})
    cfg = load_study(path)
    inputs._MEMO.clear()
    run(cfg)
    first = _logged_data(trial_dir(cfg.out, 0) / "train.log")
    second = _logged_data(trial_dir(cfg.out, 1) / "train.log")
    assert first[1] == "built" and second[1] == "memory"
    assert second[0] < 1.0
    inputs._MEMO.clear()  # as in a second `hpsearch run` of the study
    run(cfg.model_copy(update={"n_trials": 3}))
    third = _logged_data(trial_dir(cfg.out, 2) / "train.log")
    assert third[1] == "disk cache" and third[0] < 1.0


def test_fast_path_keeps_the_maths(demo_dir, tmp_path):
    """Windows padded to buckets and short batches padded with filler rows (the shapes CUDA
    graphs need) train the same model: same losses, same F1, up to float rounding."""
    import json

    still = {**TINY["scratch"], "attention_probs_dropout_prob": 0.0}
    cfg = _cfg(demo_dir, batch_size=24, dropout=0.0, scratch=still, eval_every=6,
               buckets=[16, 32], max_length=48)
    prep = prepare(cfg, demo_dir, tmp_path / "cache")
    off = train(cfg.model_copy(update={"fast_path": "off"}), prep, tmp_path / "off")
    on = train(cfg.model_copy(update={"fast_path": "on"}), prep, tmp_path / "on")
    assert "fast path: buckets [16, 32, 48]" in (tmp_path / "on" / "train.log").read_text()

    def losses(run):
        rows = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, rows) if "loss" in r]

    assert losses("on") == pytest.approx(losses("off"), rel=1e-4)
    assert [s for s, _ in on.history] == [s for s, _ in off.history]
    assert [v for _, v in on.history] == pytest.approx([v for _, v in off.history], abs=0.01)
    assert on.train_tokens == off.train_tokens  # filler rows are not counted as tokens


def test_token_budget_on_buckets_gives_one_shape_per_bucket():
    from hpsearch.trainer.batching import bucket_of, make_batches, rows_for

    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 100, size=500)
    widths = (32, 64, 104)
    batches = make_batches(lengths, max_tokens=1024, seed=0, epoch=0, widths=widths)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    for b in batches:
        w = bucket_of(int(lengths[b].max()), widths)
        assert len(b) <= rows_for(w, max_tokens=1024, batch_size=None)


def test_nan_loss_stops_the_trial_with_a_reason(demo_dir, tmp_path):
    from hpsearch.trainer import TrialStopped

    cfg = _cfg(demo_dir, learning_rate=1e12, max_grad_norm=None, warmup_ratio=0.0,
               max_epochs=1)
    with pytest.raises(TrialStopped) as e:
        train(cfg, prepare(cfg, demo_dir, tmp_path / "cache"), tmp_path / "t")
    assert e.value.reason == "nan_loss" and "loss is not finite at step" in str(e.value)


def _cost_in_child(prep, queue) -> None:
    queue.put(prep.cost())


def test_data_cost_is_booked_once(demo_dir, tmp_path):
    """The trial that prepared the data pays for it; a second trial, or a trial forked off a
    worker pool's main process, logs no data time."""
    import multiprocessing as mp

    from hpsearch.trainer import inputs

    cfg = _cfg(demo_dir, train_limit=120)
    inputs._MEMO.clear()
    prep = prepare(cfg, demo_dir, tmp_path / "cache")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_cost_in_child, args=(prep, queue))
    child.start()
    child.join(30)
    assert queue.get(timeout=5) == (0.0, "from the parent process")
    assert prep.cost() == (prep.seconds, "built")
    assert prep.cost() == (0.0, "memory")


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile on a CPU needs a C compiler")
def test_compiled_fast_path_keeps_the_maths(demo_dir, tmp_path):
    """The fast path's compiled model (what CUDA graphs replay on a GPU) computes the same
    losses and F1 as the model as transformers runs it: fp32, no dropout, same batches."""
    import json

    still = {**TINY["scratch"], "attention_probs_dropout_prob": 0.0}
    cfg = _cfg(demo_dir, batch_size=24, dropout=0.0, scratch=still, eval_every=6,
               buckets=[16, 32], max_length=48, max_steps=12)
    prep = prepare(cfg, demo_dir, tmp_path / "cache")
    off = train(cfg.model_copy(update={"fast_path": "off"}), prep, tmp_path / "off")
    on = train(cfg.model_copy(update={"fast_path": "on", "compile": True}), prep, tmp_path / "on")
    log = (tmp_path / "on" / "train.log").read_text()
    assert "torch.compile" in log and "compile failed" not in log

    def losses(run):
        rows = (tmp_path / run / "metrics.jsonl").read_text().splitlines()
        return [r["loss"] for r in map(json.loads, rows) if "loss" in r]

    assert losses("on") == pytest.approx(losses("off"), rel=1e-4)
    assert [v for _, v in on.history] == pytest.approx([v for _, v in off.history], abs=1e-3)

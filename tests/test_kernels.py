"""The CPU fast path's dropout and attention compute the model's maths, only cheaper."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO  # noqa: F401  (puts the repository on sys.path)
from test_trainer import _cfg

from hpsearch.trainer import prepare, train
from hpsearch.trainer.batching import collate, make_batches
from hpsearch.trainer.kernels import Dropout, attention, masked_dropout, use_cpu_kernels
from hpsearch.trainer.modeling import build_model


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_keeps_each_element_with_probability_1_minus_p(p):
    torch.manual_seed(0)
    n = 2_000_000
    out = masked_dropout(torch.ones(n), p)
    kept = out != 0
    assert torch.all(out[kept] == torch.tensor(1 / (1 - p)))  # scaled by 1/(1-p), exactly
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * sigma
    # neighbours independent: the pair (kept, kept) as often as (1-p)^2
    both = (kept[:-1] & kept[1:]).float().mean().item()
    assert abs(both - (1 - p) ** 2) < 5 * math.sqrt((1 - p) ** 2 / n)


def test_dropout_masks_follow_torch_seed_and_gradients_follow_the_mask():
    x = torch.randn(64, 50, 32, requires_grad=True)
    torch.manual_seed(7)
    a = masked_dropout(x, 0.1)
    torch.manual_seed(7)
    b = masked_dropout(x, 0.1)
    c = masked_dropout(x, 0.1)
    assert torch.equal(a, b) and not torch.equal(b, c)  # the seed decides; draws differ
    a.sum().backward()
    mask = (a != 0).float() * torch.tensor(1 / 0.9)
    assert torch.equal(x.grad, mask)  # d(x*m)/dx = m
    assert masked_dropout(x, 0.1, training=False) is x and masked_dropout(x, 0.0) is x
    drop = Dropout(0.1).eval()
    assert drop(x) is x and drop.state_dict() == {}


def test_attention_matches_the_reference_with_padding():
    torch.manual_seed(0)
    b, h, n, d = 3, 2, 11, 16
    q, k, v = (torch.randn(b, h, n, d) for _ in range(3))
    keep = torch.ones(b, n, dtype=torch.bool)
    keep[1, 7:] = keep[2, 3:] = False
    bias = torch.zeros(b, 1, n, n).masked_fill(~keep[:, None, None, :], torch.finfo().min)
    module = torch.nn.Module()
    out, _ = attention(module, q, k, v, bias, scaling=d**-0.5, dropout=0.0)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
    assert out.shape == (b, n, h, d)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)
    out, _ = attention(module, q, k, v, keep[:, None, None, :], scaling=d**-0.5)
    torch.testing.assert_close(out, ref.transpose(1, 2), rtol=1e-5, atol=1e-5)
    out, _ = attention(module, q, k, v, None, dropout=0.0)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v).transpose(1, 2),
                               rtol=1e-5, atol=1e-5)


def test_a_model_with_the_kernels_computes_what_transformers_builds(demo_dir, tmp_path):
    cfg = _cfg(demo_dir)
    prep = prepare(cfg, demo_dir, tmp_path / "cache")
    torch.manual_seed(0)
    plain = build_model(cfg, prep.tokenizer, prep.labels)
    fast = copy.deepcopy(plain)
    # embeddings, attention probabilities, attention output, feed-forward output, classifier
    assert use_cpu_kernels(fast) == "attention, 5 dropouts"
    idx = make_batches(prep.train.lengths, max_tokens=512, seed=0, epoch=0)[0]
    batch = collate(prep.train, idx, prep.tokenizer.pad_token_id, multiple=1)
    assert batch["attention_mask"].min() == 0  # padded rows
    for m in (plain, fast):
        m.eval()
    with torch.no_grad():
        torch.testing.assert_close(fast(**batch).logits, plain(**batch).logits,
                                   rtol=1e-4, atol=1e-5)
    assert fast.state_dict().keys() == plain.state_dict().keys()


def test_cpu_fast_path_trains_like_the_plain_model(demo_dir, tmp_path):
    """With dropout, the two draw different masks; F1 after two epochs stays close."""
    cfg = _cfg(demo_dir, eval_every=10)
    prep = prepare(cfg, demo_dir, tmp_path / "cache")
    fast = train(cfg, prep, tmp_path / "fast")
    plain = train(cfg.model_copy(update={"fast_path": "off"}), prep, tmp_path / "plain")
    assert "fast path: CPU kernels" in (tmp_path / "fast" / "train.log").read_text()
    assert "CPU kernels" not in (tmp_path / "plain" / "train.log").read_text()
    assert fast.steps == plain.steps and fast.train_tokens == plain.train_tokens
    assert abs(fast.value - plain.value) < 0.1, (fast.value, plain.value)


def test_without_dropout_the_cpu_fast_path_computes_the_plain_models_run(demo_dir, tmp_path):
    """Dropout off, nothing random is left: the kernels must give the plain model's run, loss
    by loss and evaluation by evaluation (up to float summation order)."""
    import json

    cfg = _cfg(demo_dir, eval_every=10)
    cfg = cfg.model_copy(update={"scratch": cfg.scratch.model_copy(update={
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0})})
    prep = prepare(cfg, demo_dir, tmp_path / "cache")
    runs = {}
    for name, path in (("fast", "auto"), ("plain", "off")):
        train(cfg.model_copy(update={"fast_path": path}), prep, tmp_path / name)
        rows = [json.loads(x) for x in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        runs[name] = rows
    steps = {n: [(r["step"], r["loss"]) for r in rows if "loss" in r] for n, rows in runs.items()}
    evals = {n: [(r["step"], r["val_f1"]) for r in rows if r.get("eval")]
             for n, rows in runs.items()}
    assert [s for s, _ in steps["fast"]] == [s for s, _ in steps["plain"]]
    for (_, a), (_, b) in zip(steps["fast"], steps["plain"]):
        assert a == pytest.approx(b, rel=1e-4)
    assert [s for s, _ in evals["fast"]] == [s for s, _ in evals["plain"]]
    for (_, a), (_, b) in zip(evals["fast"], evals["plain"]):
        assert abs(a - b) <= 0.003
    assert max(f for _, f in evals["plain"]) > 0.1, "a run that learned something"

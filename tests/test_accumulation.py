"""Gradient accumulation and gradient checkpointing: less memory, the same trial.

``gradient_accumulation_steps: A`` keeps ``max_tokens``/``batch_size`` the budget of one
optimizer update and runs each batch as up to A micro-batches of about a quarter of it (A = 4);
``gradient_checkpointing`` recomputes activations in the backward. Neither changes what a
trial computes: fp32 and no dropout, every step's loss agrees with the plain run's to 1e-5 and
every evaluation's F1 is the same.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    cli,
    exact_trainer,
    study_config,
    trials_of,
    write_study,
)

from hpsearch.config import load_study
from hpsearch.config.trainer import RUN_ONLY
from hpsearch.errors import ConfigError
from hpsearch.trainer import Interrupted, fastpath, loop, train
from hpsearch.trainer.batching import collate
from hpsearch.trainer.state import same_settings


@pytest.fixture(scope="module")
def prep(exact_prep):
    return exact_prep


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _curves(folder: Path) -> tuple[list[float], list[float]]:
    rows = _rows(folder)
    return ([r["loss"] for r in rows if "loss" in r],
            [r["val_f1"] for r in rows if r.get("eval")])


def _forwards(monkeypatch) -> list[tuple[int, int]]:
    """The shape of every training forward pass from now on."""
    shapes: list[tuple[int, int]] = []
    inner = fastpath.Runner.forward_backward

    def spy(self, batch, *args, **kw):
        shapes.append(tuple(batch["input_ids"].shape))
        return inner(self, batch, *args, **kw)

    monkeypatch.setattr(fastpath.Runner, "forward_backward", spy)
    return shapes


def _assert_same_curves(a: Path, b: Path) -> None:
    (loss_a, f1_a), (loss_b, f1_b) = _curves(a), _curves(b)
    assert len(loss_a) == len(loss_b) and len(f1_a) == len(f1_b) >= 3
    worst = max(abs(x - y) / abs(x) for x, y in zip(loss_a, loss_b))
    assert worst <= 1e-5, worst
    assert f1_a == f1_b
    assert f1_a[-1] > 0.3, "a run that learns, or equal curves prove little"


@pytest.mark.parametrize("over", [
    {},  # a token budget, the default CPU plan
    {"batch_size": 16},  # 16 sentences an update, 4 per micro-batch
    {"fast_path": "on", "max_epochs": 1},  # fixed rows per bucket: a micro-batch has a quarter
], ids=["max_tokens", "batch_size", "fixed_shapes"])
def test_four_micro_batches_train_what_one_batch_does(demo_dir, prep, tmp_path, monkeypatch,
                                                      over):
    shapes = _forwards(monkeypatch)
    whole = train(exact_trainer(demo_dir, **over), prep, tmp_path / "a1")
    whole_shapes, shapes[:] = list(shapes), []
    split = train(exact_trainer(demo_dir, gradient_accumulation_steps=4, **over), prep,
                  tmp_path / "a4")

    assert split.steps == whole.steps and split.train_tokens == whole.train_tokens
    _assert_same_curves(tmp_path / "a1", tmp_path / "a4")
    assert len(shapes) > 3 * len(whole_shapes), "most updates took four forward passes"
    biggest = max(r for r, _ in whole_shapes)
    assert max(r for r, _ in shapes) <= math.ceil(biggest / 4)
    if "fast_path" not in over:  # no filler rows: the same sentences, a quarter at a time
        assert sum(r for r, _ in shapes) == sum(r for r, _ in whole_shapes)
        cost = max(r * w for r, w in shapes)
        assert cost < max(r * w for r, w in whole_shapes) / 2, "a micro-batch pads far less"


def test_gradients_set_aside_between_micro_batches_add_up(demo_dir, prep, tmp_path,
                                                          monkeypatch):
    """The CUDA-graph path sums micro-batch gradients outside the graphs' memory; run that
    code on the CPU and it must give the same update as autograd's own accumulation."""
    cfg = exact_trainer(demo_dir, gradient_accumulation_steps=4, max_epochs=1)
    train(cfg, prep, tmp_path / "own")
    monkeypatch.setattr(fastpath.Runner, "grads_borrowed", lambda self: True)
    train(cfg, prep, tmp_path / "aside")
    assert _curves(tmp_path / "own")[0] == _curves(tmp_path / "aside")[0]


def test_resumed_mid_run_with_accumulation_is_the_uninterrupted_run(demo_dir, prep, tmp_path):
    cfg = exact_trainer(demo_dir, gradient_accumulation_steps=3, checkpoint_every=5)
    whole = train(cfg, prep, tmp_path / "whole")
    steps = iter(range(1000))
    with pytest.raises(Interrupted):
        train(cfg, prep, tmp_path / "t", should_stop=lambda: next(steps) >= 10)
    resumed = train(cfg, prep, tmp_path / "t")
    assert resumed.resumed_from_step == 11
    assert resumed.value == whole.value
    assert _curves(tmp_path / "t") == _curves(tmp_path / "whole")


def test_gradient_checkpointing_recomputes_and_trains_the_same(demo_dir, prep, tmp_path,
                                                               monkeypatch):
    """Bit for bit, dropout included: the recomputation replays the forward's RNG state."""
    models, calls = [], []
    build = loop.build_model

    def counted(*args, **kw):
        model = build(*args, **kw)
        models.append(model)
        calls.append(0)
        i = len(calls) - 1
        inner = model.bert.encoder.layer[0].intermediate  # inside the checkpointed layer
        inner.register_forward_hook(lambda *_: calls.__setitem__(i, calls[i] + 1))
        return model

    monkeypatch.setattr(loop, "build_model", counted)
    cfg = exact_trainer(demo_dir, max_epochs=1, dropout=0.1)
    plain = train(cfg, prep, tmp_path / "plain")
    ckpt = train(cfg.model_copy(update={"gradient_checkpointing": True}), prep, tmp_path / "gc")
    assert _curves(tmp_path / "plain") == _curves(tmp_path / "gc")
    assert plain.value == ckpt.value

    # Active: the layer ran again in every training step's backward (evaluation is the same
    # in both runs), and a forward keeps far fewer tensors for the backward.
    assert calls[1] - calls[0] == ckpt.steps
    model = models[1].train()
    batch = collate(prep.train, np.arange(32), 0)

    def kept(checkpointed: bool) -> int:
        for layer in model.bert.encoder.layer:
            layer.gradient_checkpointing = checkpointed
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: saved.append(t.numel() * t.element_size()) or t, lambda t: t):
            model(**batch).loss.backward()
        return sum(saved)

    assert kept(True) < 0.6 * kept(False)


def test_fields_at_their_default_leave_old_studies_and_checkpoints_alone(demo_dir, tmp_path):
    from hpsearch.config.loading import study_fingerprint

    base = study_fingerprint(study_config(tmp_path, demo_dir))
    assert "gradient_accumulation_steps" not in base["trainer"]
    assert "gradient_checkpointing" in RUN_ONLY  # the same numbers: a way to run, not a setting
    now = exact_trainer(demo_dir).model_dump(mode="json", exclude=set(RUN_ONLY))
    older = {k: v for k, v in now.items() if k != "gradient_accumulation_steps"}
    assert same_settings(older, now)
    assert not same_settings(older, {**now, "gradient_accumulation_steps": 2})


@pytest.mark.parametrize("where, needle", [
    ({"trainer": {"gradient_accumulation_steps": 2}}, "trainer.gradient_accumulation_steps"),
    ({"search_space": {"gradient_checkpointing": {"type": "categorical",
                                                  "choices": [False, True]}}},
     "search_space.gradient_checkpointing"),
])
def test_fused_trials_refuse_them_in_one_line(demo_dir, tmp_path, where, needle):
    over = {"trainer": {**where.get("trainer", {})}}
    if "search_space" in where:
        over["search_space"] = {"learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2},
                                **where["search_space"]}
    path = write_study(tmp_path, demo_dir, **over)
    r = cli("run", str(path), "--fuse", "2")
    assert r.exit_code == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "fuse" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_checkpointing_with_compile_is_refused_in_one_line(demo_dir, tmp_path):
    path = write_study(tmp_path, demo_dir,
                       trainer={"gradient_checkpointing": True, "compile": True})
    with pytest.raises(ConfigError) as e:
        load_study(path)
    assert str(e.value).count("\n") == 0
    assert "trainer.gradient_checkpointing: not with compile: true" in str(e.value)


@pytest.mark.slow
def test_a_study_searches_accumulation_and_checkpointing(demo_dir, tmp_path):
    space = {"learning_rate": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True},
             "gradient_accumulation_steps": {"type": "categorical", "choices": [1, 4]},
             "gradient_checkpointing": {"type": "categorical", "choices": [False, True]}}
    path = write_study(tmp_path, demo_dir, search_space=space, n_trials=2,
                       trainer={"max_epochs": 1})
    r = cli("run", str(path))
    assert r.exit_code == 0, r.stderr
    done = trials_of(path)
    assert len(done) == 2 and all(t.value is not None for t in done)
    assert all(t.params["gradient_accumulation_steps"] in (1, 4) for t in done)

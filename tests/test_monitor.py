"""The trainer's health signals in metrics.jsonl: a diverging run shows itself before it fails."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import TINY

from hpsearch.config import TrainerConfig
from hpsearch.trainer import prepare, train
from hpsearch.trainer.state import TrialStopped


def _rows(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def prep(demo_dir, tmp_path_factory):
    cfg = TrainerConfig(**{**TINY, "data_dir": str(demo_dir)})
    return prepare(cfg, demo_dir, tmp_path_factory.mktemp("cache"))


def _cfg(demo_dir: Path, **over) -> TrainerConfig:
    return TrainerConfig(**{**TINY, "data_dir": str(demo_dir), "progress": False, **over})


def test_a_diverging_run_shows_its_gradient_norms_rise_before_the_nan(demo_dir, prep, tmp_path):
    cfg = _cfg(demo_dir, learning_rate=1e4, max_grad_norm=None, monitor_every=1)
    with pytest.raises(TrialStopped, match="not finite") as e:
        train(cfg, prep, tmp_path / "t")
    assert e.value.reason == "nan_loss"
    steps = [r for r in _rows(tmp_path / "t") if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, len(steps) + 1)), "a row every step"
    finite = [r for r in steps if math.isfinite(r["loss"])]
    assert len(finite) >= 2 and not math.isfinite(steps[-1]["loss"]), "rows up to the NaN"
    norms = [r["grad_norm/global"] for r in finite]
    assert norms[-1] > 100 * norms[0], norms  # the blow-up, visible before the failure
    layers = {k for k in finite[0] if k.startswith("grad_norm/")}
    assert {"grad_norm/global", "grad_norm/embeddings", "grad_norm/layer.0",
            "grad_norm/classifier"} <= layers
    for stat in ("mean", "std", "near_zero", "saturated"):
        assert f"act/layer.0/{stat}" in finite[0]
    assert 0.0 <= finite[0]["act/layer.0/near_zero"] <= 1.0


def test_loss_and_lr_every_step_layers_on_schedule_health_at_evaluations(demo_dir, prep,
                                                                         tmp_path):
    cfg = _cfg(demo_dir, monitor_every=4)
    result = train(cfg, prep, tmp_path / "t")
    rows = _rows(tmp_path / "t")
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, result.steps + 1))
    assert all(r["lr"] > 0 and math.isfinite(r["loss"]) for r in steps)
    monitored = [r["step"] for r in steps if "grad_norm/global" in r]
    assert monitored == [s for s in range(1, result.steps + 1) if s % 4 == 0]
    evals = [r for r in rows if r.get("eval")]
    assert evals and all(r["eval_ms_per_sentence"] > 0 and r["peak_memory_mb"] > 0
                         for r in evals)

    off = train(_cfg(demo_dir, monitor_every=0), prep, tmp_path / "off")
    assert not any("grad_norm/global" in r for r in _rows(tmp_path / "off"))
    assert off.value == result.value, "watching changes nothing it computes"

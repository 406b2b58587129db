"""Shared fixtures: generated demo data and study files small enough for CPU tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests that train use one thread: faster than two on a loaded 2-core machine, and reproducible.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _own_compile_cache(monkeypatch):
    """A study points inductor's cache at its own folder for the rest of the process; in a test
    process that would outlive the test, so each test starts (and ends) without it."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from hpsearch.demo_data import generate_demo_data

    return Path(generate_demo_data(tmp_path_factory.mktemp("demo") / "data"))


def study_dict(tmp_path: Path, data_dir: Path, **over) -> dict:
    """A quick study: tiny scratch BERT, a slice of the demo data, a few seconds a trial."""
    trainer = {
        "model": "scratch",
        "scratch": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                    "intermediate_size": 64, "vocab_size": 800},
        "data_dir": str(data_dir),
        "train_limit": 300,
        "val_limit": 100,
        "max_epochs": 2,
        "max_tokens": 1024,
        "precision": "fp32",
        "device": "cpu",
        "num_threads": 1,
        "progress": False,
    }
    trainer.update(over.pop("trainer", {}))
    d = {
        "name": "t",
        "n_trials": 2,
        "seed": 0,
        "backend": {"name": "optuna", "sampler": "random"},
        "search_space": {
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "weight_decay": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
        },
        "trainer": trainer,
        "output_dir": str(tmp_path / "out"),
    }
    d.update(over)
    return d


def write_study(tmp_path: Path, data_dir: Path, name: str = "study.yaml", **over) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(study_dict(tmp_path, data_dir, **over)))
    return path


def spawn_hpsearch(*args: str, env: dict | None = None) -> subprocess.Popen:
    """The real command line started in the background, for tests that signal or kill it."""
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch", *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def hpsearch(*args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """The real command line, in a child process, as a user would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **kw.pop("env", {})}
    return subprocess.run(
        [sys.executable, "-m", "hpsearch", *args], capture_output=True, text=True,
        timeout=timeout, env=env, cwd=kw.pop("cwd", REPO), **kw,
    )


@pytest.fixture(scope="session")
def pg_server():
    """One real PostgreSQL server on 127.0.0.1 for the whole run (see tests/pg.py)."""
    import warnings

    import pg

    try:
        server = pg.start_server()
    except pg.Unavailable as e:
        msg = f"POSTGRESQL TESTS SKIPPED: {e}"
        warnings.warn(msg, stacklevel=1)
        print(f"\n{'!' * 80}\n{msg}\n{'!' * 80}", file=sys.__stderr__)
        pytest.skip(msg)
    yield server
    server.stop()

"""Shared fixtures: generated demo data, study files small enough for CPU tests, their trials."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import optuna
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# Tests that train use one thread: faster than two on a loaded 2-core machine, and reproducible.
os.environ.setdefault("OMP_NUM_THREADS", "1")

#: The trainer of a quick study: a tiny scratch BERT on a slice of the demo data, fp32 on one
#: CPU thread, so that a trial takes a few seconds and one seed always gives one F1.
TINY = {
    "model": "scratch",
    "scratch": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 64, "vocab_size": 800},
    "train_limit": 300,
    "val_limit": 100,
    "max_epochs": 2,
    "max_tokens": 1024,
    "precision": "fp32",
    "device": "cpu",
    "num_threads": 1,
    "progress": False,
}


#: A study's trainer whose point is not the training: one epoch on 120 sentences, a second or
#: two a trial.
ONE_EPOCH = {"train_limit": 120, "val_limit": 40, "max_epochs": 1}


#: Dropout off: two runs of one trial (one process and two ranks, one batch and its
#: micro-batches) then compute the same numbers, up to the order of float additions.
NO_DROPOUT = {"dropout": 0.0, "scratch": {**TINY["scratch"], "attention_probs_dropout_prob": 0.0,
                                          "hidden_dropout_prob": 0.0}}


def exact_trainer(data_dir, **over):
    """TINY without dropout, evaluating every 4 steps: a trial whose every loss and F1 another
    way of running it must reproduce."""
    from hpsearch.config import TrainerConfig

    return TrainerConfig(**{**TINY, **NO_DROPOUT, "data_dir": str(data_dir),
                            "learning_rate": 3e-3, "eval_every": 4, **over})


@pytest.fixture(scope="module")
def exact_prep(demo_dir, tmp_path_factory):
    """exact_trainer's data, tokenised once per test module."""
    from hpsearch.trainer import prepare

    return prepare(exact_trainer(demo_dir), demo_dir, tmp_path_factory.mktemp("cache"))


@pytest.fixture(autouse=True)
def _own_compile_cache(monkeypatch):
    """A study points inductor's cache at its own folder for the rest of the process; in a test
    process that would outlive the test, so each test starts (and ends) without it."""
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    from hpsearch.demo_data import generate_demo_data

    return Path(generate_demo_data(tmp_path_factory.mktemp("demo") / "data"))


def study_dict(tmp_path: Path, data_dir: Path | str, *, tiny: bool = True, **over) -> dict:
    """A study's settings, outputs under ``tmp_path``: two random-search trials of a few seconds.

    ``trainer`` settings go over TINY's; ``tiny=False`` leaves TINY out, for a study that is
    filled through the Optuna API and never trains. Any other key replaces the study's own.
    """
    trainer = {**(TINY if tiny else {}), "data_dir": str(data_dir), **over.pop("trainer", {})}
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
    return copy.deepcopy(d)  # callers edit their copy; TINY and theirs stay apart


def write_study(tmp_path: Path, data_dir: Path | str, file: str = "study.yaml", **over) -> Path:
    """The settings of study_dict as the YAML study file a user runs."""
    path = tmp_path / file
    path.write_text(yaml.safe_dump(study_dict(tmp_path, data_dir, **over)), encoding="utf-8")
    return path


def study_config(tmp_path: Path, data_dir: Path | str, **over):
    """The settings of study_dict as the validated config hpsearch runs in-process."""
    from hpsearch.config import parse_study

    return parse_study(study_dict(tmp_path, data_dir, **over))


def trials_of(study, states=None, *, env: dict | None = None) -> list[optuna.trial.FrozenTrial]:
    """The trials of a study file (or config) as another process reads them back: Optuna's own
    load_study on the study's database, none of hpsearch's study driver in between.

    ``env``: variables the study file refers to (a password), set only while it is read.
    """
    from hpsearch.config import load_study
    from hpsearch.storage import open_storage

    cfg = study
    if isinstance(study, (str, Path)):
        with mock.patch.dict(os.environ, env or {}):
            cfg = load_study(study)
    storage = open_storage(cfg.storage_url, heartbeat=False)
    return optuna.load_study(study_name=cfg.name, storage=storage).get_trials(states=states)


def free_port() -> int:
    """A port of 127.0.0.1 nothing listens on (for a server to take, or to find closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_no_hub_fails_fast(path: Path, tmp_path: Path, offline: bool, name: str) -> None:
    """`hpsearch run` of a study naming ``name`` on the hub, with the hub closed (a port nothing
    listens on) or switched off (HF_HUB_OFFLINE): one line naming it and why, exit 2, under
    10 s, and nothing written."""
    env = {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}", "HF_HOME": str(tmp_path / "hf")}
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    t0 = time.perf_counter()
    r = hpsearch("run", str(path), env=env)
    assert time.perf_counter() - t0 < 10
    assert r.returncode == 2, r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert name in line
    assert ("HF_HUB_OFFLINE" if offline else "cannot be reached") in line
    assert not (tmp_path / "out").exists()  # no study.db, no folder


def spawn_hpsearch(*args: str, env: dict | None = None) -> subprocess.Popen:
    """The real command line started in the background, for tests that signal or kill it."""
    return subprocess.Popen(
        [sys.executable, "-m", "hpsearch", *args], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def cli(*args: str, env: dict | None = None):
    """The real command line in this process: exit code, stdout and stderr kept apart.

    For every command whose point is not the process itself (signals, kill -9, worker pools,
    what a fresh interpreter prints or logs): it skips the seconds a fresh interpreter spends
    importing torch and transformers. ``env``: variables set while it runs.
    """
    from click.testing import CliRunner

    from hpsearch.cli import main

    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


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

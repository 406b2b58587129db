"""The study database under stress, on a real PostgreSQL server: a worker SIGKILLed mid-trial,
the server restarted mid-study, and a password that never reaches the screen or a log."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import optuna
import pg
import pytest
from conftest import hpsearch, spawn_hpsearch, trials_of, write_study
from optuna.trial import TrialState

from hpsearch.trainer.checkpoint import list_checkpoints

# Every test but the last trains; the last waits for a server that never answers.
pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Heartbeat of storage")]

ENV = {"HP_TEST_PG_PASSWORD": pg.PASSWORD, "HPSEARCH_DB_RETRY_SECONDS": "120"}


def _storage(server) -> str:
    """The server's URL as a study file names it: the password comes from the environment."""
    return server.url(password="${HP_TEST_PG_PASSWORD}")


def _start(*args: str) -> subprocess.Popen:
    return spawn_hpsearch(*args, env=ENV)


def _no_password_anywhere(out_dir: Path, *texts: str) -> None:
    for text in texts:
        assert pg.PASSWORD not in text
    for f in out_dir.rglob("*"):
        if f.is_file() and f.suffix in (".log", ".jsonl", ".json", ".txt", ".yaml"):
            assert pg.PASSWORD not in f.read_text(errors="replace"), f


def test_sigkilled_worker_on_postgresql_resumes_from_its_checkpoint(tmp_path, demo_dir,
                                                                    pg_server):
    slow = {"train_limit": 300, "max_tokens": 256, "max_epochs": 2, "checkpoint_every": 4}
    path = write_study(tmp_path, demo_dir, name="faults-kill", storage=_storage(pg_server),
                       n_trials=2, trainer=slow)
    proc = _start("run", str(path))
    ckpts = tmp_path / "out" / "trials" / "trial-0000" / "checkpoints"
    deadline = time.time() + 120
    while not list_checkpoints(ckpts):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    out, err = proc.communicate()
    killed = trials_of(path, env=ENV)[0]
    assert killed.state == TrialState.RUNNING

    r = hpsearch("resume", str(path), env=ENV)
    assert r.returncode == 0, r.stderr
    ts = trials_of(path, env=ENV)
    assert [t.state for t in ts] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    cont = next(t for t in ts if t.system_attrs.get("hpsearch:retry_of") == 0)
    assert cont.params == killed.params and cont.user_attrs["resumed_from_step"] >= 4
    _no_password_anywhere(tmp_path / "out", out, err, r.stdout, r.stderr)


def test_database_restart_mid_study_loses_and_duplicates_nothing(tmp_path, demo_dir, pg_server):
    trainer = {"train_limit": 200, "val_limit": 40, "max_tokens": 512, "max_epochs": 2}
    path = write_study(tmp_path, demo_dir, name="faults-restart", storage=_storage(pg_server),
                       n_trials=6, trainer=trainer)
    proc = _start("run", str(path), "--workers", "3")
    deadline = time.time() + 180
    while not any(t.state == TrialState.COMPLETE for t in _trials_or_none(path)):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    pg_server.halt()  # the server goes away in the middle of running trials...
    time.sleep(4)
    pg_server.resume()  # ...and comes back
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "unreachable" in err  # the workers waited, and said so
    ts = trials_of(path, env=ENV)
    assert [t.number for t in ts] == list(range(6))
    assert [t.state for t in ts] == [TrialState.COMPLETE] * 6
    assert len({tuple(sorted(t.params.items())) for t in ts}) == 6
    assert "6/6 trials" in out
    _no_password_anywhere(tmp_path / "out", out, err)


def _trials_or_none(path: Path) -> list[optuna.trial.FrozenTrial]:
    try:
        return trials_of(path, env=ENV)
    except KeyError:  # the study is not created yet
        return []


def test_unreachable_database_is_one_line_without_the_password(tmp_path, demo_dir, pg_server):
    down = _storage(pg_server).replace(f":{pg_server.port}/", ":1/")  # nothing listens there
    path = write_study(tmp_path, demo_dir, name="faults-down", storage=down)
    r = hpsearch("run", str(path), env={**ENV, "HPSEARCH_DB_RETRY_SECONDS": "1"})
    assert r.returncode == 1
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the study database cannot be reached"), r.stderr
    assert "Traceback" not in r.stderr
    assert "hp:***@127.0.0.1:1/" in r.stdout + r.stderr
    _no_password_anywhere(tmp_path, r.stdout, r.stderr)


def test_a_study_lock_the_server_dropped_is_known_lost_and_taken_by_another(pg_server):
    """A server that restarts (here: cuts the holder's connection) drops the advisory lock
    while its holder lives on; the holder must learn it before it asks for a trial, or two
    workers claim at once and draw the same point (seen as two identical trials)."""
    import sqlalchemy

    from hpsearch.storage import study_lock

    url = pg_server.url()
    with study_lock(url, "lock-lost") as lock:
        assert lock.held()
        admin = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        with admin.connect() as c:
            cut = c.execute(sqlalchemy.text(
                "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' "
                "AND pid <> pg_backend_pid()")).scalars().all()
        assert cut == [True]
        assert not lock.held()
        with study_lock(url, "lock-lost") as other:  # not a wait: nobody holds it now
            assert other.held()
    with study_lock(url, "lock-lost") as again:
        assert again.held()

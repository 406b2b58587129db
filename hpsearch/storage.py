"""The study database: one Optuna storage whatever the backend, opened the same way everywhere.

SQLite is the default (a file next to the study's outputs). ``journal:PATH`` is Optuna's
append-only journal file for many local workers, and ``postgresql+psycopg://...`` is for many
machines. RDB storages get a heartbeat, which is how a trial whose process died is told apart
from one that is still running.

``study_lock`` is the one place where workers take turns: checking how many trials a study
still needs and asking for the next one must be a single step, or two workers that look at
the same moment both see "one left" and the study overshoots ``n_trials``. It also keeps two
samplers from proposing the same point: the second one asks after the first trial's
parameters are in the database, where constant-liar samplers see them.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna

HEARTBEAT_INTERVAL = 10  # seconds between a running trial's "still alive" writes
GRACE_PERIOD = 60  # a RUNNING trial silent for this long belongs to a dead process

# Optuna flags the RDB heartbeat as experimental on every open; hpsearch depends on it on purpose.
warnings.filterwarnings("ignore", message=".*heartbeat_interval.*experimental")


def redact(url: str) -> str:
    """The URL as it may be printed or logged: any password replaced by ***."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def open_storage(url: str, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``, creating an SQLite file's or journal's folder first."""
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        path.parent.mkdir(parents=True, exist_ok=True)
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
        )
        return optuna.storages.journal.JournalStorage(backend)
    engine_kwargs: dict = {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        # Several workers on one SQLite file wait for the lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True}
    kw = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD}
    storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs,
                                         **(kw if heartbeat else {}))
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        _sqlite_wal(storage.engine)
    return storage


def _sqlite_wal(engine) -> None:
    """Write-ahead log, synced at checkpoints rather than at every commit.

    A trial writes some thirty small commits (attributes, reports, its result); with SQLite's
    default rollback journal each one waits for an fsync, which cost a quarter of a second per
    trial, and readers block writers. In WAL mode readers and the writer proceed together, and
    a power cut can lose the last commits but never corrupts the file: a trial that loses its
    result is still RUNNING and is resumed from its checkpoint like any interrupted trial.
    """
    import sqlalchemy

    def on_connect(dbapi_conn, record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    sqlalchemy.event.listen(engine, "connect", on_connect)
    engine.dispose()  # connections opened before the listener reconnect with it


# ----------------------------------------------------------------------------- taking turns


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (and threads) of one machine; freed if we die."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


_ENGINES: dict[tuple[int, str], object] = {}
_LOCAL = threading.Lock()


def _engine(url: str):
    """One small engine per process and URL; never one inherited through fork."""
    import sqlalchemy

    key = (os.getpid(), url)
    if key not in _ENGINES:
        _ENGINES[key] = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    return _ENGINES[key]


def _lock_key(study_name: str) -> int:
    digest = hashlib.sha256(f"hpsearch:{study_name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Held by one process at a time for a study, on every machine that shares ``url``.

    SQLite and journal files are shared by one machine's processes, so a lock file next to
    them is enough. PostgreSQL (and MySQL) take a server-side advisory lock, which the server
    drops by itself when the holder's connection dies with its process.
    """
    if url.startswith("journal:"):
        path = Path(url.removeprefix("journal:").removeprefix("//"))
        with file_lock(path.with_name(path.name + ".hpsearch-lock")):
            yield
        return
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        path = Path(url.removeprefix("sqlite:///"))
        with file_lock(path.with_name(path.name + ".hpsearch-lock")):
            yield
        return
    import sqlalchemy

    dialect = url.split(":", 1)[0].split("+", 1)[0]
    if dialect not in ("postgresql", "mysql", "mariadb"):
        with _LOCAL:  # an in-memory database lives in this process only
            yield
        return
    with _engine(url).connect() as conn:
        if dialect == "postgresql":
            key = _lock_key(study_name)
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        else:
            name = f"hpsearch:{hashlib.sha256(study_name.encode()).hexdigest()[:40]}"
            conn.execute(sqlalchemy.text("SELECT GET_LOCK(:n, -1)"), {"n": name})
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:n)"), {"n": name})

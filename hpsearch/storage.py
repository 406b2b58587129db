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
import functools
import hashlib
import logging
import os
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import optuna

from hpsearch.errors import causes
from hpsearch.optuna_compat import RDB_BACKEND_CALLS

HEARTBEAT_INTERVAL = 10  # seconds between a running trial's "still alive" writes
GRACE_PERIOD = 60  # a RUNNING trial silent for this long belongs to a dead process

#: How long a database that went away (a server restart, a failover) is waited for.
DB_RETRY_SECONDS = float(os.environ.get("HPSEARCH_DB_RETRY_SECONDS", "600"))

# Optuna flags the RDB heartbeat as experimental on every open; hpsearch depends on it on purpose.
warnings.filterwarnings("ignore", message=".*heartbeat_interval.*experimental")

log = logging.getLogger("hpsearch.storage")


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


def local_file(url: str) -> Path | None:
    """The file a journal or SQLite URL names (None: a database server, or SQLite in memory)."""
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:").removeprefix("//"))
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url.removeprefix("sqlite:///"))
    return None


def open_storage(url: str, *, heartbeat: bool = True) -> optuna.storages.BaseStorage:
    """An Optuna storage for ``url``, creating an SQLite file's or journal's folder first."""
    path = local_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    if url.startswith("journal:"):
        backend = optuna.storages.journal.JournalFileBackend(
            str(path), lock_obj=optuna.storages.journal.JournalFileOpenLock(str(path))
        )
        return optuna.storages.journal.JournalStorage(backend)
    engine_kwargs: dict = {}
    if url.startswith("sqlite:///"):
        # Several workers on one SQLite file wait for the lock instead of failing at once.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    elif url.startswith("postgresql"):
        engine_kwargs = {"pool_pre_ping": True}
    kw = {"heartbeat_interval": HEARTBEAT_INTERVAL, "grace_period": GRACE_PERIOD}
    storage = retry_outage(url, lambda: RetryingRDBStorage(
        url, engine_kwargs=engine_kwargs, **(kw if heartbeat else {})))
    if path is not None:
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


# ----------------------------------------------------------------------------- outages


def is_outage(e: BaseException | None) -> bool:
    """The database is down or restarting (worth waiting for), not a wrong query or a bug."""
    import sqlalchemy.exc as sa

    return any(
        isinstance(c, (sa.OperationalError, sa.InterfaceError))
        or (isinstance(c, sa.DBAPIError) and c.connection_invalidated)
        for c in causes(e)
    )


def retry_outage(url: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, waiting out a database outage with backoff.

    A study runs for days; a database restart in the middle must cost a pause, not the
    trials in flight. Each wait is logged with the URL's password hidden. After
    ``DB_RETRY_SECONDS`` the error is raised: by then it is not a restart.
    """
    delay, waited = 0.5, 0.0
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if not is_outage(e) or waited >= DB_RETRY_SECONDS:
                raise
            log.warning("study database %s unreachable (%s); retrying in %.1fs",
                        redact(url), type(e).__name__, delay)
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 10.0)


class RetryingRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage whose every call waits out an outage (see ``retry_outage``).

    Stale pooled connections after a restart are replaced by SQLAlchemy's pre-ping (PostgreSQL)
    or on the failed call's rollback; the call is then made again on a fresh connection.
    """


def _retrying(name: str):
    original = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(original)
    def call(self, *args, **kwargs):
        return retry_outage(self.url, original, self, *args, **kwargs)

    return call


for _name in (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial_id_from_study_id_trial_number",
    "get_trial", "get_all_trials", "get_best_trial", "record_heartbeat", *RDB_BACKEND_CALLS,
):
    setattr(RetryingRDBStorage, _name, _retrying(_name))


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


class LockHold:
    """A held study lock. ``held()``: whether it still is. A database server that restarted
    (or cut the holder's connection) dropped it, and another process may hold it now: what the
    holder read under it may be stale, and what it decides must be read again under a new one.
    """

    def __init__(self, check: Callable[[], bool] | None = None):
        self._check = check
        self.lost = False

    def held(self) -> bool:
        if self._check is None:
            return True  # a lock file or a lock in memory: held until released
        try:
            self.lost = self.lost or not self._check()
        except Exception as e:
            if not is_outage(e):
                raise
            self.lost = True
        return not self.lost


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[LockHold]:
    """Held by one process at a time for a study, on every machine that shares ``url``.

    SQLite and journal files are shared by one machine's processes, so a lock file next to
    them is enough. PostgreSQL (and MySQL) take a server-side advisory lock, which the server
    drops by itself when the holder's connection dies with its process, and also when the
    server restarts under a holder that lives on: what it yields says whether it is still held.
    """
    path = local_file(url)
    if path is not None:
        with file_lock(path.with_name(path.name + ".hpsearch-lock")):
            yield LockHold()
        return
    import sqlalchemy

    dialect = url.split(":", 1)[0].split("+", 1)[0]
    if dialect not in ("postgresql", "mysql", "mariadb"):
        with _LOCAL:  # an in-memory database lives in this process only
            yield LockHold()
        return
    if dialect == "postgresql":
        key = _lock_key(study_name)
        take, give = "SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"
        # The one advisory lock this connection takes: held if the server still says so.
        mine = ("SELECT count(*) > 0 FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND pid = pg_backend_pid()")
        asked: dict = {}
    else:
        key = f"hpsearch:{hashlib.sha256(study_name.encode()).hexdigest()[:40]}"
        take, give = "SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"
        mine, asked = "SELECT IS_USED_LOCK(:k) = CONNECTION_ID()", {"k": key}

    def acquire():
        conn = _engine(url).connect()
        try:
            conn.execute(sqlalchemy.text(take), {"k": key})
        except BaseException:
            conn.close()
            raise
        return conn

    conn = retry_outage(url, acquire)
    hold = LockHold(lambda: bool(conn.execute(sqlalchemy.text(mine), asked).scalar()))
    try:
        yield hold
    finally:
        try:
            if not hold.lost:  # else the server dropped it with the connection
                conn.execute(sqlalchemy.text(give), {"k": key})
        except Exception as e:
            if not is_outage(e):
                raise  # a server that went away dropped the lock with the connection
        finally:
            conn.close()

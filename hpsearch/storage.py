"""The study database: one Optuna storage whatever the backend, opened the same way everywhere.

SQLite is the default (a file next to the study's outputs). ``journal:PATH`` is Optuna's
append-only journal file for many local workers, and ``postgresql+psycopg://...`` is for many
machines. RDB storages get a heartbeat, which is how a trial whose process died is told apart
from one that is still running.
"""

from __future__ import annotations

import re
import warnings
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
    return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **(kw if heartbeat else {}))

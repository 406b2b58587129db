"""Every error a user is shown as one line, and the walk down an exception's causes.

The command line turns these classes, and only these, into a one-line message: a
:class:`UserError` is the user's to fix (exit 2), a stop or a full disk says what to do next.
This module imports nothing heavy, so the CLI can catch by class before torch is loaded.

What a user must be told (the database is down, the disk is full) is often a few links below
the exception that reaches the top: SQLAlchemy wraps the driver's error, Optuna wraps
SQLAlchemy's, a trial wraps the trainer's. Chains can loop (an exception raised while handling
itself), so the walk stops at the first link seen twice.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator


class UserError(ValueError):
    """Something the user must fix, already phrased as the one line to show them."""

    def __init__(self, message: str):
        # Messages quote user input (values, library errors) that may hold line breaks.
        super().__init__(" ".join(str(message).splitlines()))


class ConfigError(UserError):
    """A study file or command-line problem."""


class DataError(UserError):
    """A data file problem, phrased as `file:line: what is wrong`."""


class ModelSourceError(UserError):
    """The model named in the study cannot be found or loaded."""


class ExportError(UserError):
    """PNG export is impossible here; the message says what to install."""


class DashboardUnavailable(UserError):
    """optuna-dashboard is not installed; the message says how to install it."""


class StudyInterrupted(Exception):
    """The run stopped on request; the interrupted trials are queued to resume."""


class DiskFull(Exception):
    """A trial could not write to the disk; it is queued to resume once there is space."""


def causes(e: BaseException | None) -> Iterator[BaseException]:
    """``e``, then what caused it (or was being handled when it was raised), and so on."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def root_cause(e: BaseException) -> BaseException:
    """The deepest link of the chain."""
    *_, last = causes(e)
    return last


def is_disk_full(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain; safetensors reports it as text, not as an OSError."""
    return any(
        (isinstance(c, OSError) and c.errno == errno.ENOSPC)
        or "No space left on device" in str(c) or "StorageFull" in str(c)
        for c in causes(e)
    )

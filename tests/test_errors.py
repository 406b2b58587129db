"""The error a user is shown is found below wrappers, and a looping chain does not hang."""

from __future__ import annotations

import errno

import sqlalchemy.exc as sa

from hpsearch.errors import is_disk_full, root_cause
from hpsearch.storage import is_outage


def _wrapped(inner: BaseException) -> RuntimeError:
    try:
        try:
            raise inner
        except BaseException as e:
            raise ValueError("trial failed") from e
    except ValueError as e:
        try:
            raise RuntimeError("study stopped") from e
        except RuntimeError as outer:
            return outer


def test_causes_are_found_below_wrappers():
    full = _wrapped(OSError(errno.ENOSPC, "No space left on device"))
    down = _wrapped(sa.OperationalError("SELECT 1", {}, ConnectionRefusedError("port 5432")))
    assert is_disk_full(full) and not is_outage(full)
    assert is_outage(down) and not is_disk_full(down)
    assert isinstance(root_cause(down), sa.OperationalError)


def test_a_looping_chain_ends():
    a, b = RuntimeError("a"), RuntimeError("b")
    a.__context__, b.__context__ = b, a
    assert not is_disk_full(a)
    assert not is_outage(a)
    assert root_cause(a) is b

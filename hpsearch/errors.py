"""An exception's chain of causes, walked once, safely.

What a user must be told (the database is down, the disk is full) is often a few links below
the exception that reaches the top: SQLAlchemy wraps the driver's error, Optuna wraps
SQLAlchemy's, a trial wraps the trainer's. Chains can loop (an exception raised while handling
itself), so the walk stops at the first link seen twice.
"""

from __future__ import annotations

from collections.abc import Iterator


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

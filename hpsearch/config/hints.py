"""The nearest known spelling of a word the user typed: `did you mean median?` beats a list."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def closest(word: str, options: Iterable[str]) -> str | None:
    """The option ``word`` was most likely meant to be, or None when none is near enough.

    Case is ignored (`F1` means `f1`); the cutoff keeps short unrelated names (`lr`) unanswered
    rather than answered wrongly.
    """
    options = [str(o) for o in options]
    lower = {o.lower(): o for o in reversed(options)}
    found = difflib.get_close_matches(str(word).lower(), list(lower), n=1, cutoff=0.6)
    return lower[found[0]] if found and found[0] != str(word) else None


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``'; did you mean X?'`` to end a message with, or nothing."""
    best = closest(word, options)
    return f"; did you mean {best}?" if best else ""

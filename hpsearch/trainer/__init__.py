"""The trainer inside every trial: data, batching, model, loop, checkpoints, metrics.

Names are loaded on first use: the driver and the views import parts of this package (the
trial folder's layout) without paying for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Prepared": "inputs", "prepare": "inputs",
    "Interrupted": "state", "TrialPrunedAt": "state", "TrialResult": "state",
    "TrialStopped": "state", "train": "loop",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'hpsearch.trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hpsearch.trainer.{_WHERE[name]}"), name)

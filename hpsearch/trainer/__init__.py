"""The trainer inside every trial: data, batching, model, loop, checkpoints, metrics."""

from hpsearch.trainer.inputs import Prepared, prepare
from hpsearch.trainer.loop import Interrupted, TrialPrunedAt, TrialResult, TrialStopped, train

__all__ = [
    "Interrupted",
    "Prepared",
    "TrialPrunedAt",
    "TrialResult",
    "TrialStopped",
    "prepare",
    "train",
]

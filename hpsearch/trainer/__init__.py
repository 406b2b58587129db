"""The trainer inside every trial: data, batching, model, loop, checkpoints, metrics."""

from hpsearch.trainer.loop import Interrupted, TrialPrunedAt, TrialResult, TrialStopped, train
from hpsearch.trainer.prepare import Prepared, prepare

__all__ = [
    "Interrupted",
    "Prepared",
    "TrialPrunedAt",
    "TrialResult",
    "TrialStopped",
    "prepare",
    "train",
]

"""What a trial's run carries from step to step, and the ways it ends; shared by the solo loop
(loop.py) and the fused one (fused_loop.py), so that a fused member is judged, resumed and
ended exactly as its solo run would be.

``TrainState`` is the position and all that was learnt so far, and all of it goes into every
checkpoint; ``find_checkpoint`` refuses one written with other settings; ``judge`` takes an
evaluation in (best, history, the pruner's word, early stopping). A run ends with a
``TrialResult`` or one of the exceptions below, each of which the study records differently.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from hpsearch.config import TrainerConfig
from hpsearch.config.trainer import RECORDED_IF_SET
from hpsearch.trainer import checkpoint as ckpt
from hpsearch.trainer import trial_dir


class Reporter(Protocol):
    def report(self, value: float, step: int) -> None: ...
    def should_prune(self) -> bool: ...


class TrialStopped(Exception):
    """The trial ended early for a reason the study should record (nan_loss, oom, ...)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class TrialPrunedAt(Exception):
    """The pruner stopped the trial; ``value`` and ``step`` are its last report."""

    def __init__(self, value: float, step: int):
        super().__init__(f"pruned at step {step} with value {value:.4f}")
        self.value, self.step = value, step


class Interrupted(Exception):
    """A stop was requested; a checkpoint was written and the trial can be resumed."""


class RankDied(Interrupted):
    """Another rank of a multi-device trial died without a word (killed, lost): nothing is
    wrong with the trial, so it resumes from its last checkpoint rather than failing."""


@dataclass
class TrialResult:
    value: float
    best_step: int
    best_scores: dict[str, Any]
    steps: int
    train_tokens: int
    train_seconds: float
    tokens_per_second: float
    data_seconds: float
    resumed_from_step: int | None
    history: list[list[float]] = field(default_factory=list)
    startup_seconds: float | None = None  # from the trainer's start to its first step's end
    first_step_at: float | None = None  # wall clock of that moment


@dataclass
class TrainState:
    """Position and what has been learnt so far: all of it goes into every checkpoint."""

    config: dict[str, Any]  # the settings that shape the run; a checkpoint of others is refused
    widths: list[int] | None  # bucket widths a token budget's batches were cut for
    step: int = 0
    epoch: int = 0
    batch: int = 0
    best: float | None = None
    best_step: int = 0
    best_scores: dict[str, Any] = field(default_factory=dict)
    history: list[list[float]] = field(default_factory=list)
    bad_evals: int = 0
    train_tokens: int = 0
    train_seconds: float = 0.0
    # Several devices: each rank's torch RNG (its dropout masks), for a resume on as many.
    rank_rng: list[dict[str, str]] | None = None

    def load(self, saved: dict[str, Any]) -> None:
        for f in fields(self):
            if f.name in saved:
                setattr(self, f.name, saved[f.name])


def told_the_others(error: BaseException | None) -> bool:
    """Whether the other ranks of a trial end as rank 0 does, having been told: the run ended,
    was pruned or stopped on request. On any other way out they may be waiting for rank 0."""
    if error is None or isinstance(error, TrialPrunedAt):
        return True
    return isinstance(error, Interrupted) and not isinstance(error, RankDied)


def find_checkpoint(resume_from: Path | None, root: Path, st: TrainState
                    ) -> ckpt.Checkpoint | None:
    """The newest good checkpoint, a predecessor's first, refused if it computes otherwise."""
    found = ckpt.latest(resume_from) if resume_from else None
    found = found or ckpt.latest(root)
    if found is None:
        return None
    if not same_settings(found.state.get("config"), st.config):
        raise TrialStopped(
            "checkpoint_mismatch",
            f"{found.path} was written by a run with other settings; refusing to mix them",
        )
    if found.state.get("widths") != st.widths:  # a budget's batches follow the buckets
        raise TrialStopped(
            "checkpoint_mismatch",
            f"{found.path} was written with batches cut for buckets {found.state['widths']}"
            f" but this run uses {st.widths} (fast_path on another device?)",
        )
    return found


def same_settings(saved: dict[str, Any] | None, now: dict[str, Any]) -> bool:
    """Whether a checkpoint's settings are this run's. A field added since it was written
    (``RECORDED_IF_SET``) is missing from it, and counts as its default there."""
    if saved is None:
        return False
    for k in RECORDED_IF_SET:
        if k not in saved and k in now and now[k] == TrainerConfig.model_fields[k].default:
            now = {kk: v for kk, v in now.items() if kk != k}
    return saved == now


def take_over(st: TrainState, found: ckpt.Checkpoint, metrics: trial_dir.MetricsLog,
              log: logging.Logger, reporter: Reporter | None) -> None:
    """Continue from ``found``: its position and history, and the pruner sees the curve."""
    st.load(found.state)
    metrics.truncate_after(st.step)
    log.info("resumed from %s at step %d", found.path, st.step)
    if reporter is not None:
        for step, value in st.history:  # the pruner judges the whole curve
            reporter.report(value, int(step))


def judge(st: TrainState, scores: dict[str, Any], cfg: TrainerConfig, metric: str,
          maximize: bool, metrics: trial_dir.MetricsLog, log: logging.Logger,
          reporter: Reporter | None, save_best: Callable[[], None],
          health: dict[str, Any] | None = None) -> bool:
    """Take an evaluation into the state: history, best (``save_best`` keeps its weights),
    metrics and log lines; report it, and say whether early stopping ends the trial.

    Raises ``TrialPrunedAt`` when the reporter's pruner says so.
    """
    value = float(scores[metric])
    st.history.append([st.step, value])
    delta = cfg.early_stopping.min_delta if cfg.early_stopping else 0.0
    if st.best is None or (value > st.best + delta if maximize else value < st.best - delta):
        st.best, st.best_step, st.best_scores, st.bad_evals = value, st.step, scores, 0
        save_best()
    else:
        st.bad_evals += 1
    metrics.write(step=st.step, epoch=st.epoch, eval=True,
                  **{f"val_{k}": v for k, v in scores.items() if k != "per_type"},
                  **(health or {}))
    log.info("step %d val %s %.4f (best %.4f at %d) loss %.4f", st.step, metric, value,
             st.best, st.best_step, scores["loss"])
    if reporter is not None:
        reporter.report(value, st.step)
        if reporter.should_prune():
            log.info("pruned at step %d", st.step)
            raise TrialPrunedAt(value, st.step)
    es = cfg.early_stopping
    if es and st.bad_evals >= es.patience and st.epoch >= es.min_epochs:
        log.info("early stop at step %d: %d evals without gain", st.step, es.patience)
        return True
    return False

"""One trial's life in the study: claimed, trained, and recorded.

``claim_trial`` counts and asks under the study's lock, so ``n_trials`` holds whoever asks;
``run_trial`` trains it with the real trainer and records what happened, success or failure,
in the study. The single-process driver (study.py) and the workers (workers.py) both go
through these, so a trial is born and recorded the same way wherever it runs.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from hpsearch.attrs import (
    A_CONFIRMS,
    A_DIR,
    A_FROM,
    A_HOST,
    A_OOM_RETRY,
    A_OVERRIDES,
    A_PID,
    A_PROVENANCE,
    A_REASON,
    A_RETRIED,
    A_SAMPLER,
    A_WORKER,
    A_WORKER_PID,
    DISK_FULL,
    ERROR,
    OOM,
    work_left,
)
from hpsearch.backends import make_sampler
from hpsearch.config import StudyConfig
from hpsearch.confirm import queue_confirmations
from hpsearch.errors import StudyInterrupted, is_disk_full
from hpsearch.optuna_compat import storage_of, trial_id
from hpsearch.provenance import trial_provenance
from hpsearch.recovery import (
    Heartbeat,
    interrupt,
    queue_continuation,
    recover_interrupted,
    resume_folder,
)
from hpsearch.slurm import trial_attrs
from hpsearch.space import suggest
from hpsearch.storage import LockHold, study_lock
from hpsearch.trainer.trial_dir import drop_checkpoints, trial_dir

# ----------------------------------------------------------------------------- claiming

# Samplers whose only state is a random stream: seeded per trial (see trial_sampler).
_STREAM_SAMPLERS = ("random", "tpe", "gp", "cmaes")


def trial_sampler(cfg: StudyConfig, number: int) -> optuna.samplers.BaseSampler:
    """The sampler that proposes trial ``number``, seeded by (study seed, trial number).

    A sampler built once per process replays the same random stream in every process: four
    workers started with ``seed: 0`` would propose four identical first trials, and a study
    restarted after a crash would repeat its first trials' points. Seeding by trial number
    gives every trial its own draw, the same whichever process asks. The bayes backend already
    derives its randomness from the trial number and QMC's scramble must stay fixed.
    """
    backend = cfg.backend
    if getattr(backend, "sampler", None) not in _STREAM_SAMPLERS:
        return make_sampler(cfg)
    import numpy as np

    seed = int(np.random.SeedSequence([cfg.seed, number]).generate_state(1)[0])
    return make_sampler(cfg.model_copy(update={"seed": seed}))


def claim_trials(
    study: optuna.Study, cfg: StudyConfig, k: int, worker: str | None = None,
    worker_pid: int | None = None,
) -> tuple[list[optuna.Trial], list[int]]:
    """Up to ``k`` trials this process should run next (none when the study needs no more).

    Recovery, the count and the asks happen under the study lock: without it two workers could
    both see one trial left and both ask. The parameters are suggested under the lock too,
    so each next sampler (TPE's or bayes' constant liar) sees the ones before as pending.
    Returns the trials and the numbers of dead trials recovered on the way. ``worker_pid``:
    the process that reports the trials if this one dies (a worker, for its trial process).

    A database server that restarts drops the lock while we wait for it to come back, and
    another worker may take it meanwhile: each ask first checks that the lock is still ours,
    else all is read again under a new one (two asks that counted the same trials would draw
    the same point).
    """
    trials: list[optuna.Trial] = []
    recovered: list[int] = []
    while True:
        with study_lock(cfg.storage_url, cfg.name) as lock:
            recovered += recover_interrupted(study)
            queue_confirmations(study, cfg)  # once the search is over: the finalists' seeds
            if _ask(study, cfg, k, trials, worker, worker_pid, lock):
                return trials, recovered


def _ask(study: optuna.Study, cfg: StudyConfig, k: int, trials: list[optuna.Trial],
         worker: str | None, worker_pid: int | None, lock: LockHold) -> bool:
    """Ask for trials under ``lock`` until there are ``k`` or the study needs no more; False
    when the lock was lost on the way (the trials asked before that were asked under it)."""
    while len(trials) < k and work_left(study, cfg.n_trials):
        number = len(study.get_trials(deepcopy=False))
        if not lock.held():
            return False
        study.sampler = trial_sampler(cfg, number)
        trial = study.ask()
        storage = storage_of(study)
        for key, v in ((A_HOST, socket.gethostname()), (A_PID, os.getpid()),
                       (A_WORKER_PID, worker_pid or os.getpid()),
                       (A_WORKER, worker or f"{socket.gethostname()}:{os.getpid()}"),
                       (A_SAMPLER, type(study.sampler).__name__)):
            storage.set_trial_system_attr(trial_id(trial), key, v)
        suggest(trial, cfg.search_space)
        trials.append(trial)
    return True


def more_work(study: optuna.Study, cfg: StudyConfig) -> bool:
    """Whether the study needs another trial from anyone: the search's, a continuation, or,
    once the search is over, a confirmation run of a finalist (queued here if it is due)."""
    if work_left(study, cfg.n_trials):
        return True
    if cfg.confirm is None:
        return False
    with study_lock(cfg.storage_url, cfg.name):
        return queue_confirmations(study, cfg) > 0 or work_left(study, cfg.n_trials)


def claim_trial(
    study: optuna.Study, cfg: StudyConfig, worker: str | None = None
) -> tuple[optuna.Trial | None, list[int]]:
    """The next trial this process should run, or None when the study needs no more."""
    trials, recovered = claim_trials(study, cfg, 1, worker)
    return (trials[0] if trials else None), recovered


# ----------------------------------------------------------------------------- while it runs


class StopRequest:
    """First Ctrl-C/SIGTERM: finish the step, checkpoint, exit 130. Second: stop at once."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print("\nstopping: writing a checkpoint (press Ctrl-C again to stop at once)", flush=True)

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


class InStudySteps:
    """Reports a trial's values at the study's steps, so pruners compare equal amounts of data.

    Its own step divided by ``scale``; its k-th scheduled evaluation is put at the study's
    k-th (``k * eval_every``) even where rounding its own interval moved it a little, because
    median and percentile pruners compare trials only at exactly the same step.
    """

    def __init__(self, trial: optuna.Trial, scale: float, own_every: int | None,
                 study_every: int | None):
        self.trial, self.scale = trial, scale
        self.own_every, self.study_every = own_every, study_every
        self.last = 0

    def report(self, value: float, step: int) -> None:
        if self.own_every and self.study_every and step % self.own_every == 0:
            at = step // self.own_every * self.study_every
        else:
            at = max(1, round(step / self.scale))
        if at <= self.last:  # an end-of-training evaluation just after a scheduled one
            return
        self.last = at
        self.trial.report(value, at)

    def should_prune(self) -> bool:
        return self.trial.should_prune()


def use_compile_cache(cfg: StudyConfig) -> None:
    """Keep compiled kernels in the study's cache folder, beside the tokenised data.

    A trial on the GPU fast path compiles and captures its shapes (a minute or more for a
    bert-base); every later trial with the same shapes, in any process, and a study resumed
    after the machine was restarted, find inductor's compiled graphs and kernels there instead
    of in a temporary folder. A cache folder the user set is left alone.
    """
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((cfg.out / "cache" / "inductor").resolve())


# ----------------------------------------------------------------------------- recording


@dataclass
class TrialOutcome:
    number: int
    state: TrialState
    value: float | None
    params: dict[str, Any]
    seconds: float
    reason: str | None = None
    resumed_from_step: int | None = None
    worker: str | None = None


def record_failure(study: optuna.Study, trial: optuna.Trial, reason: str, error: str, *,
                   tb: str | None = None, retry: dict[str, Any] | None = None) -> None:
    """The one way a failed trial is written down: why, the error, then FAIL.

    ``retry`` (keyword arguments of ``queue_continuation``) queues a trial that takes this
    one's place, for failures that are the machine's, not the parameters' (out of memory,
    disk full): the failed trial then no longer counts.
    """
    storage, tid = storage_of(study), trial_id(trial)
    if tb is not None:
        trial.set_user_attr("traceback", tb[-8000:])
    trial.set_user_attr("fail_reason", reason)
    trial.set_user_attr("error", error)
    storage.set_trial_system_attr(tid, A_REASON, reason)
    if retry is not None:
        storage.set_trial_system_attr(tid, A_RETRIED, True)
    study.tell(trial, state=TrialState.FAIL)
    if retry is not None:
        queue_continuation(study, storage.get_trial(tid), **retry)


def _record_success(study: optuna.Study, trial: optuna.Trial, result) -> None:
    for k, v in (
        ("best_step", result.best_step), ("steps", result.steps),
        ("train_seconds", round(result.train_seconds, 3)),
        ("tokens_per_second", round(result.tokens_per_second, 1)),
        ("data_seconds", round(result.data_seconds, 3)),
        ("resumed_from_step", result.resumed_from_step),
        ("startup_seconds", result.startup_seconds and round(result.startup_seconds, 3)),
        ("first_step_at", result.first_step_at),
        ("best_scores", {k: v for k, v in result.best_scores.items()
                         if isinstance(v, (int, float, dict))}),
    ):
        trial.set_user_attr(k, v)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        # the process's peak: a fused array's, shared by its members
        trial.set_user_attr("peak_gpu_bytes", int(torch.cuda.max_memory_allocated()))
    study.tell(trial, result.value)


def _failure_reason(e: BaseException) -> str:
    import torch

    if isinstance(e, MemoryError | torch.OutOfMemoryError):
        return OOM
    return DISK_FULL if is_disk_full(e) else ERROR


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def disk_full_message(outcome: TrialOutcome, cfg: StudyConfig) -> str:
    return (f"no space left on the device of {cfg.out} (trial {outcome.number}); its last good "
            "checkpoint is kept: free some space and run again to resume it")


# ----------------------------------------------------------------------------- one trial


@dataclass
class Started:
    """A claimed trial about to train: where, from which checkpoint, with what settings."""

    trial: optuna.Trial
    params: dict[str, Any]
    out: Path
    resume_from: Path | None
    attrs: dict[str, Any]
    overrides: dict[str, Any]
    t0: float
    tcfg: Any = None  # its TrainerConfig, once it validated

    def trainer_config(self, cfg: StudyConfig):
        self.tcfg = cfg.trainer_for({**self.params, **self.overrides})
        return self.tcfg

    def reporter(self, cfg: StudyConfig):
        """The trial itself, or a translation to the study's steps for another batch size.
        A confirmation run reports its curve but is never pruned: it exists to run whole."""
        scale = cfg.step_scale(self.tcfg)
        if A_CONFIRMS in self.attrs:
            return NeverPruned(self.trial)
        if scale == 1:
            return self.trial
        return InStudySteps(self.trial, scale, self.tcfg.eval_every, cfg.trainer.eval_every)


class NeverPruned:
    """Reports like the trial, and the pruner is never asked."""

    def __init__(self, trial: optuna.Trial):
        self.trial = trial

    def report(self, value: float, step: int) -> None:
        self.trial.report(value, step)

    def should_prune(self) -> bool:
        return False


def start_trial(study: optuna.Study, trial: optuna.Trial, cfg: StudyConfig) -> Started:
    """Write down who trains the trial and in which folder, what it resumes from, and its
    provenance (data, model, software, device)."""
    storage, tid = storage_of(study), trial_id(trial)
    params = suggest(trial, cfg.search_space)
    out = trial_dir(cfg.out, trial.number)
    attrs = storage.get_trial(tid).system_attrs
    resume_from = resume_folder(attrs)
    for k, v in ((A_HOST, socket.gethostname()), (A_PID, os.getpid()), (A_DIR, str(out)),
                 *trial_attrs().items()):  # and its Slurm job and task, under Slurm
        storage.set_trial_system_attr(tid, k, v)
    if resume_from is not None and resume_from.parent != out:
        storage.set_trial_system_attr(tid, A_FROM, str(resume_from.parent))
    # What it trains on and with: hashed once per process, one write per trial.
    trial.set_user_attr(A_PROVENANCE, trial_provenance(cfg))
    return Started(trial, params, out, resume_from, attrs, attrs.get(A_OVERRIDES, {}),
                   time.time())


def record_end(study: optuna.Study, s: Started, cfg: StudyConfig, result=None,
               error: BaseException | None = None) -> TrialOutcome:
    """Record how a trial ended: completed (``result``), pruned, or failed (``error``)."""
    from hpsearch.trainer import TrialPrunedAt, TrialStopped

    trial = s.trial

    def done(state: TrialState, value: float | None, reason: str | None = None,
             resumed: int | None = None) -> TrialOutcome:
        return TrialOutcome(trial.number, state, value, s.params, time.time() - s.t0, reason,
                            resumed)

    if isinstance(error, TrialPrunedAt):
        trial.set_user_attr("pruned_step", error.step)
        study.tell(trial, state=TrialState.PRUNED)  # its value: the last F1 reported
        drop_checkpoints(s.out)  # never resumed, whatever keep
        return done(TrialState.PRUNED, error.value)
    if error is not None:
        if isinstance(error, TrialStopped):
            reason, text, tb = error.reason, str(error), None
        else:
            reason, text = _failure_reason(error), f"{type(error).__name__}: {error}"[:2000]
            tb = "".join(traceback.format_exception(error))
        retry, shown = _retry_of(cfg, reason, s.tcfg if reason == OOM else None, s.attrs,
                                 s.overrides)
        record_failure(study, trial, reason, text, tb=tb, retry=retry)
        return done(TrialState.FAIL, None, shown)
    _record_success(study, trial, result)
    return done(TrialState.COMPLETE, result.value, resumed=result.resumed_from_step)


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    cfg: StudyConfig,
    prep,
    stop: Callable[[], bool] = lambda: False,
) -> TrialOutcome:
    """Train a claimed trial and record how it ended; a stop raises ``StudyInterrupted``."""
    from hpsearch import reporting
    from hpsearch.trainer import Interrupted, train
    from hpsearch.trainer.state import RankDied

    use_compile_cache(cfg)
    s = start_trial(study, trial, cfg)
    # The report closes after record_end (or interrupt): its end is the one the study has.
    with Heartbeat(study, trial_id(trial)), reporting.open_trial(cfg, study, s):
        try:
            tcfg = s.trainer_config(cfg)
            result = train(
                tcfg, prep, s.out, reporter=s.reporter(cfg), resume_from=s.resume_from,
                should_stop=stop, metric=cfg.metric, maximize=cfg.direction == "maximize",
            )
        except Interrupted as e:
            # A stop request, or a rank of a multi-device trial that died without a word
            # (RankDied): the trial is not at fault and resumes from its last checkpoint.
            interrupt(study, trial_id(trial))
            if isinstance(e, RankDied):
                raise StudyInterrupted(f"trial {trial.number}: {e}; run again to resume "
                                       "it") from e
            raise StudyInterrupted(f"trial {trial.number} checkpointed; run again to resume") from e
        except Exception as e:
            outcome = record_end(study, s, cfg, error=e)
            del e  # its traceback holds the model and the batch: free them before a retry
            return outcome
        return record_end(study, s, cfg, result)


def _retry_of(cfg: StudyConfig, reason: str, tcfg, attrs: dict, overrides: dict
              ) -> tuple[dict[str, Any] | None, str]:
    """Whether a failure queues a trial in its place, and the reason as the user sees it."""
    if reason == DISK_FULL:
        return {"resume": True}, reason  # from its last checkpoint, once space is freed
    if reason != OOM:
        return None, reason
    _free_accelerator_memory()
    if cfg.on_oom != "halve_batch" or attrs.get(A_OOM_RETRY):
        return None, reason
    half = {"max_tokens": max(16, tcfg.max_tokens // 2)}
    if tcfg.batch_size:
        half["batch_size"] = max(1, tcfg.batch_size // 2)
    retry = {"resume": False, "extra": {A_OVERRIDES: {**overrides, **half}, A_OOM_RETRY: True}}
    return retry, f"{OOM}, retried with max_tokens={half['max_tokens']}"

"""Telling a live trial from a dead one, and giving a dead trial its continuation.

A trial whose process died stays RUNNING in the database. Any process that opens the study
finds it (its process is gone, or its heartbeat went silent), marks it interrupted and queues a
continuation: a WAITING trial with the same parameters that resumes from the dead one's last
checkpoint. The interrupted trial no longer counts toward ``n_trials``; its continuation does.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.attrs import (
    A_BEAT,
    A_CONFIRMS,
    A_DIR,
    A_FROM,
    A_HOST,
    A_ORIGIN,
    A_OVERRIDES,
    A_PID,
    A_REASON,
    A_RETRY_OF,
    A_SEED,
    A_WORKER_PID,
    INTERRUPTED,
    origin_of,
)
from hpsearch.optuna_compat import storage_of, trial_id
from hpsearch.storage import GRACE_PERIOD, HEARTBEAT_INTERVAL
from hpsearch.trainer.trial_dir import checkpoints, has_checkpoint


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A killed process nobody has reaped yet (a zombie) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return True


def is_dead(t: FrozenTrial, now: float | None = None) -> bool:
    """A RUNNING trial nobody is running: its processes are gone (on this machine), or its
    heartbeat went silent (on another one, where its processes cannot be asked)."""
    if t.state != TrialState.RUNNING:
        return False
    attrs = t.system_attrs
    if attrs.get(A_HOST) == socket.gethostname() and A_PID in attrs:
        pids = {int(attrs[A_PID]), int(attrs.get(A_WORKER_PID, attrs[A_PID]))}
        if os.getpid() in pids:
            return False
        # On this machine the processes themselves say it: a trial process that crashed under
        # a live worker is that worker's to report, and a slow trial whose heartbeat lagged
        # under load must not be run twice.
        return not any(process_alive(pid) for pid in pids)
    beat = attrs.get(A_BEAT)
    if beat is None and t.datetime_start is not None:
        beat = t.datetime_start.timestamp()
    return beat is not None and (now or time.time()) - float(beat) > GRACE_PERIOD


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Mark dead RUNNING trials interrupted and queue their continuations; returns old numbers.

    Only the process that moves a trial from RUNNING to FAIL queues its continuation, so two
    workers recovering at once cannot queue it twice.
    """
    storage = storage_of(study)
    queued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_dead(t):
            continue
        try:
            storage.set_trial_system_attr(trial_id(t), A_REASON, INTERRUPTED)
            storage.set_trial_state_values(trial_id(t), TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue  # someone else finished or recovered it first
        queue_continuation(study, t)
        queued.append(t.number)
    return queued


def interrupt(study: optuna.Study, tid: int) -> None:
    """Mark a trial we own interrupted and queue its continuation (from its last checkpoint)."""
    storage = storage_of(study)
    storage.set_trial_system_attr(tid, A_REASON, INTERRUPTED)
    storage.set_trial_state_values(tid, TrialState.FAIL)
    queue_continuation(study, storage.get_trial(tid))


def queue_continuation(study: optuna.Study, t: FrozenTrial, *, resume: bool = True,
                       extra: dict[str, Any] | None = None) -> None:
    """A WAITING trial with ``t``'s parameters; ``resume`` continues from its checkpoints."""
    attrs = {"fixed_params": t.params, A_RETRY_OF: t.number, A_ORIGIN: origin_of(t),
             **(extra or {})}
    if resume and A_DIR in t.system_attrs:
        attrs[A_DIR] = t.system_attrs[A_DIR]
        if not has_checkpoint(attrs[A_DIR]) and A_FROM in t.system_attrs:
            # It died before writing one of its own (a continuation that could not even
            # adopt its predecessor's): the next one goes back to where it would have started.
            attrs[A_DIR] = t.system_attrs[A_FROM]
    if A_OVERRIDES in t.system_attrs and A_OVERRIDES not in attrs:
        attrs[A_OVERRIDES] = t.system_attrs[A_OVERRIDES]
    for key in (A_CONFIRMS, A_SEED):  # a confirmation run's continuation confirms the same
        if key in t.system_attrs:
            attrs[key] = t.system_attrs[key]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=t.params,
            distributions=t.distributions,
            user_attrs={} if not resume else t.user_attrs,
            system_attrs=attrs,
        )
    )


def resume_folder(attrs: dict[str, Any]) -> Path | None:
    """The checkpoints a claimed trial starts from: its predecessor's, if it continues one."""
    return checkpoints(Path(attrs[A_DIR])) if A_DIR in attrs else None


def others_running(study: optuna.Study) -> bool:
    """Trials in flight somewhere: one may still die and need a continuation."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,
                                                         TrialState.WAITING)))


class Heartbeat:
    """Writes 'still alive' for running trials, so other processes can tell them from dead ones.

    One thread for all the trials a process runs (a fused array runs several, and its slots
    change trials as they go): ``add`` and ``discard`` say which.
    """

    def __init__(self, study: optuna.Study, tid: int | None = None):
        self.study = study
        self.ids: set[int] = set() if tid is None else {tid}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def add(self, tid: int) -> None:
        self.ids.add(tid)
        self._beat_one(tid)

    def discard(self, tid: int) -> None:
        self.ids.discard(tid)

    def _beat_one(self, tid: int) -> None:
        storage = storage_of(self.study)
        try:
            storage.set_trial_system_attr(tid, A_BEAT, time.time())
            if isinstance(storage, optuna.storages.RDBStorage):
                storage.record_heartbeat(tid)
        except Exception:  # a missed beat is harmless; the next one may go through
            pass

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            for tid in list(self.ids):
                self._beat_one(tid)

    def __enter__(self) -> Heartbeat:
        for tid in list(self.ids):
            self._beat_one(tid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

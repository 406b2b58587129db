"""The study driver: ask for parameters, run a real trainer, tell the result, until n_trials.

``n_trials`` is a total for the study, not "this many more": a second ``hpsearch run`` of a
finished study starts nothing, and raising ``n_trials`` by two runs exactly two more. A trial
whose process died stays RUNNING in the database; the next run finds it (its process is gone,
or its heartbeat went silent), marks it interrupted and queues a continuation with the same
parameters that resumes from its last checkpoint. The interrupted trial does not count.

Any number of processes may run the same study at once (``hpsearch.workers``): each claims
its next trial with ``claim_trial``, which counts and asks under the study's lock, so
``n_trials`` holds exactly whoever asks.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import socket
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpsearch.backends import make_sampler
from hpsearch.config import ConfigError, StudyConfig, study_fingerprint
from hpsearch.errors import causes
from hpsearch.pruners import A_ORIGIN, make_pruner, origin_of
from hpsearch.space import distributions, suggest
from hpsearch.storage import (
    GRACE_PERIOD,
    HEARTBEAT_INTERVAL,
    file_lock,
    open_storage,
    redact,
    study_lock,
)

# System attributes hpsearch keeps on trials (the dashboard shows them too).
A_HOST, A_PID, A_BEAT = "hpsearch:host", "hpsearch:pid", "hpsearch:heartbeat"
A_DIR, A_REASON, A_RETRY_OF = "hpsearch:trial_dir", "hpsearch:fail_reason", "hpsearch:retry_of"
A_FROM = "hpsearch:resumed_from_dir"  # the trial folder whose checkpoints a continuation loads
A_CONFIG, A_WORKER, A_WORKER_PID = "hpsearch:config", "hpsearch:worker", "hpsearch:worker_pid"
# A trial another one takes over (it does not count), and what that one trains differently.
A_RETRIED, A_OVERRIDES, A_OOM_RETRY = "hpsearch:retried", "hpsearch:trainer_overrides", \
    "hpsearch:oom_retry"
INTERRUPTED, DISK_FULL, OOM = "interrupted", "disk_full", "oom"

# hpsearch runs its own heartbeat thread around ask/tell (see Heartbeat below).
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")


# ----------------------------------------------------------------------------- opening


def data_dir(cfg: StudyConfig) -> Path:
    """The study's data folder; ``demo`` is generated (once) under the output folder."""
    if cfg.trainer.data_dir == "demo":
        from hpsearch.demo_data import generate_demo_data

        return Path(generate_demo_data(cfg.out / "demo-data"))
    return Path(cfg.trainer.data_dir)


def open_study(cfg: StudyConfig, *, create: bool = False) -> optuna.Study:
    """The Optuna study behind a study file; only ``create`` may make a new one."""
    storage = open_storage(cfg.storage_url)
    sampler, pruner = make_sampler(cfg), make_pruner(cfg.pruner)
    if create:
        return optuna.create_study(
            storage=storage, study_name=cfg.name, direction=cfg.direction, sampler=sampler,
            pruner=pruner, load_if_exists=True,
        )
    try:
        return optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler,
                                 pruner=pruner)
    except KeyError:
        raise ConfigError(
            f"no study named '{cfg.name}' in {redact(cfg.storage_url)} (run it first)"
        ) from None


def check_unchanged(study: optuna.Study, cfg: StudyConfig, allow_changes: bool) -> None:
    """Refuse to mix trials of two different searches under one study name."""
    new = study_fingerprint(cfg)
    old_json = study.user_attrs.get(A_CONFIG)
    if old_json is None:
        study.set_user_attr(A_CONFIG, json.dumps(new, sort_keys=True))
        return
    old = json.loads(old_json)
    if old == new:
        return
    diffs = _diff(old, new)
    if not allow_changes:
        raise ConfigError(
            f"study '{cfg.name}' was run with other settings; changed: {'; '.join(diffs)} "
            "(use --allow-changes to continue anyway, or give the study a new name)"
        )
    study.set_user_attr(A_CONFIG, json.dumps(new, sort_keys=True))


def _diff(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _diff(old.get(k), new.get(k), f"{path}.{k}" if path else k)
        return out
    return [] if old == new else [f"{path}: {old!r} -> {new!r}"]


# ----------------------------------------------------------------------------- counting


def counts_toward_total(t: FrozenTrial) -> bool:
    """Every trial counts once, except one taken over by another (an interrupted trial's
    continuation, an out-of-memory trial's retry): that one counts instead."""
    return t.system_attrs.get(A_REASON) != INTERRUPTED and not t.system_attrs.get(A_RETRIED)


def n_counted(study: optuna.Study) -> int:
    return sum(counts_toward_total(t) for t in study.get_trials(deepcopy=False))


def work_left(study: optuna.Study, n_trials: int) -> bool:
    """Queued continuations run even when the total is reached: they are already counted."""
    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    return sum(counts_toward_total(t) for t in trials) < n_trials


# ----------------------------------------------------------------------------- liveness


def _process_alive(pid: int) -> bool:
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
    """A RUNNING trial nobody is running: its process is gone, or its heartbeat went silent."""
    if t.state != TrialState.RUNNING:
        return False
    attrs = t.system_attrs
    if attrs.get(A_HOST) == socket.gethostname() and A_PID in attrs:
        pids = {int(attrs[A_PID]), int(attrs.get(A_WORKER_PID, attrs[A_PID]))}
        if os.getpid() in pids:
            return False
        # A trial process that crashed under a live worker is that worker's to report.
        if not any(_process_alive(pid) for pid in pids):
            return True
    beat = attrs.get(A_BEAT)
    if beat is None and t.datetime_start is not None:
        beat = t.datetime_start.timestamp()
    return beat is not None and (now or time.time()) - float(beat) > GRACE_PERIOD


def recover_interrupted(study: optuna.Study) -> list[int]:
    """Mark dead RUNNING trials interrupted and queue their continuations; returns old numbers.

    Only the process that moves a trial from RUNNING to FAIL queues its continuation, so two
    workers recovering at once cannot queue it twice.
    """
    storage = study._storage
    queued = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_dead(t):
            continue
        try:
            storage.set_trial_system_attr(t._trial_id, A_REASON, INTERRUPTED)
            storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, RuntimeError):
            continue  # someone else finished or recovered it first
        queue_continuation(study, t)
        queued.append(t.number)
    return queued


def interrupt(study: optuna.Study, trial_id: int) -> None:
    """Mark a trial we own interrupted and queue its continuation (from its last checkpoint)."""
    storage = study._storage
    storage.set_trial_system_attr(trial_id, A_REASON, INTERRUPTED)
    storage.set_trial_state_values(trial_id, TrialState.FAIL)
    queue_continuation(study, storage.get_trial(trial_id))


def queue_continuation(study: optuna.Study, t: FrozenTrial, *, resume: bool = True,
                       extra: dict[str, Any] | None = None) -> None:
    """A WAITING trial with ``t``'s parameters; ``resume`` continues from its checkpoints."""
    attrs = {"fixed_params": t.params, A_RETRY_OF: t.number, A_ORIGIN: origin_of(t),
             **(extra or {})}
    if resume and A_DIR in t.system_attrs:
        attrs[A_DIR] = t.system_attrs[A_DIR]
        if not _has_checkpoint(attrs[A_DIR]) and A_FROM in t.system_attrs:
            # It died before writing one of its own (a continuation that could not even
            # adopt its predecessor's): the next one goes back to where it would have started.
            attrs[A_DIR] = t.system_attrs[A_FROM]
    if A_OVERRIDES in t.system_attrs and A_OVERRIDES not in attrs:
        attrs[A_OVERRIDES] = t.system_attrs[A_OVERRIDES]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.WAITING,
            params=t.params,
            distributions=t.distributions,
            user_attrs={} if not resume else t.user_attrs,
            system_attrs=attrs,
        )
    )


def _has_checkpoint(trial_dir: str) -> bool:
    ckpts = Path(trial_dir) / "checkpoints"
    return ckpts.is_dir() and any(p.name.startswith("step-") for p in ckpts.iterdir())


def is_disk_full(e: BaseException | None) -> bool:
    """ENOSPC anywhere in the chain; safetensors reports it as text, not as an OSError."""
    return any(
        (isinstance(c, OSError) and c.errno == errno.ENOSPC)
        or "No space left on device" in str(c) or "StorageFull" in str(c)
        for c in causes(e)
    )


class Heartbeat:
    """Writes 'still alive' for a running trial, so other processes can tell it from a dead one."""

    def __init__(self, study: optuna.Study, trial_id: int):
        self.study, self.trial_id = study, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _beat(self) -> None:
        storage = self.study._storage
        try:
            storage.set_trial_system_attr(self.trial_id, A_BEAT, time.time())
            if isinstance(storage, optuna.storages.RDBStorage):
                storage.record_heartbeat(self.trial_id)
        except Exception:  # a missed beat is harmless; the next one may go through
            pass

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_INTERVAL):
            self._beat()

    def __enter__(self) -> Heartbeat:
        self._beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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


def claim_trial(
    study: optuna.Study, cfg: StudyConfig, worker: str | None = None
) -> tuple[optuna.Trial | None, list[int]]:
    """The next trial this process should run, or None when the study needs no more.

    Recovery, the count and the ask happen under the study lock: without it two workers could
    both see one trial left and both ask. The parameters are suggested under the lock too,
    so the next sampler (TPE's or bayes' constant liar) sees them as pending. Returns the
    trial and the numbers of dead trials recovered on the way.
    """
    with study_lock(cfg.storage_url, cfg.name):
        recovered = recover_interrupted(study)
        if not work_left(study, cfg.n_trials):
            return None, recovered
        study.sampler = trial_sampler(cfg, len(study.get_trials(deepcopy=False)))
        trial = study.ask()
        storage = study._storage
        for k, v in ((A_HOST, socket.gethostname()), (A_PID, os.getpid()),
                     (A_WORKER_PID, os.getpid()),
                     (A_WORKER, worker or f"{socket.gethostname()}:{os.getpid()}")):
            storage.set_trial_system_attr(trial._trial_id, k, v)
        suggest(trial, cfg.search_space)
    return trial, recovered


def others_running(study: optuna.Study) -> bool:
    """Trials in flight somewhere: one may still die and need a continuation."""
    return bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,
                                                         TrialState.WAITING)))


# ----------------------------------------------------------------------------- one trial


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


class StudyInterrupted(Exception):
    """The run stopped on request; the interrupted trial is queued to resume."""


class DiskFull(Exception):
    """A trial could not write to the disk; it is queued to resume once there is space."""


class _InStudySteps:
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


def disk_full_message(outcome: TrialOutcome, cfg: StudyConfig) -> str:
    return (f"no space left on the device of {cfg.out} (trial {outcome.number}); its last good "
            "checkpoint is kept: free some space and run again to resume it")


def use_compile_cache(cfg: StudyConfig) -> None:
    """Keep compiled kernels in the study's cache folder, beside the tokenised data.

    A trial on the GPU fast path compiles and captures its shapes (a minute or more for a
    bert-base); every later trial with the same shapes, in any process, and a study resumed
    after the machine was restarted, find inductor's compiled graphs and kernels there instead
    of in a temporary folder. A cache folder the user set is left alone.
    """
    if not os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str((cfg.out / "cache" / "inductor").resolve())


def trial_dir(cfg: StudyConfig, number: int) -> Path:
    return cfg.out / "trials" / f"trial-{number:04d}"


def run_trial(
    study: optuna.Study,
    trial: optuna.Trial,
    cfg: StudyConfig,
    prep,
    stop: Callable[[], bool] = lambda: False,
) -> TrialOutcome:
    from hpsearch.trainer import Interrupted, TrialPrunedAt, TrialStopped, train

    t0 = time.time()
    use_compile_cache(cfg)
    storage = study._storage
    params = suggest(trial, cfg.search_space)
    out = trial_dir(cfg, trial.number)
    attrs = storage.get_trial(trial._trial_id).system_attrs
    overrides = attrs.get(A_OVERRIDES, {})
    resume_from = Path(attrs[A_DIR]) / "checkpoints" if A_DIR in attrs else None
    for k, v in ((A_HOST, socket.gethostname()), (A_PID, os.getpid()), (A_DIR, str(out))):
        storage.set_trial_system_attr(trial._trial_id, k, v)
    if resume_from is not None and resume_from.parent != out:
        storage.set_trial_system_attr(trial._trial_id, A_FROM, str(resume_from.parent))

    def done(state: TrialState, value: float | None, reason: str | None = None,
             resumed: int | None = None) -> TrialOutcome:
        return TrialOutcome(trial.number, state, value, params, time.time() - t0, reason, resumed)

    with Heartbeat(study, trial._trial_id):
        try:
            tcfg = cfg.trainer_for({**params, **overrides})
            scale = cfg.step_scale(tcfg)
            reporter = trial if scale == 1 else _InStudySteps(trial, scale, tcfg.eval_every,
                                                              cfg.trainer.eval_every)
            result = train(
                tcfg, prep, out, reporter=reporter, resume_from=resume_from,
                should_stop=stop, metric=cfg.metric, maximize=cfg.direction == "maximize",
            )
        except TrialPrunedAt as e:
            trial.set_user_attr("pruned_step", e.step)
            study.tell(trial, state=TrialState.PRUNED)  # its value: the last F1 reported
            shutil.rmtree(out / "checkpoints", ignore_errors=True)  # never resumed, whatever keep
            return done(TrialState.PRUNED, e.value)
        except Interrupted as e:
            interrupt(study, trial._trial_id)
            raise StudyInterrupted(f"trial {trial.number} checkpointed; run again to resume") from e
        except Exception as e:
            if isinstance(e, TrialStopped):
                reason, error = e.reason, str(e)
            else:
                reason = "error"
                if isinstance(e, MemoryError | _oom_error()):
                    reason = OOM
                elif is_disk_full(e):
                    reason = DISK_FULL
                error = f"{type(e).__name__}: {e}"[:2000]
                trial.set_user_attr("traceback", traceback.format_exc()[-8000:])
            del e  # its traceback holds the model and the batch: free them before a retry
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("error", error)
            storage.set_trial_system_attr(trial._trial_id, A_REASON, reason)
            retry: dict[str, Any] | None = None
            if reason == OOM:
                _free_accelerator_memory()
                if cfg.on_oom == "halve_batch" and not attrs.get(A_OOM_RETRY):
                    half = {"max_tokens": max(16, tcfg.max_tokens // 2)}
                    if tcfg.batch_size:
                        half["batch_size"] = max(1, tcfg.batch_size // 2)
                    retry = {"resume": False,
                             "extra": {A_OVERRIDES: {**overrides, **half}, A_OOM_RETRY: True}}
                    reason = f"{OOM}, retried with max_tokens={half['max_tokens']}"
            elif reason == DISK_FULL:
                retry = {"resume": True}  # from its last checkpoint, once space is freed
            if retry is not None:
                storage.set_trial_system_attr(trial._trial_id, A_RETRIED, True)
            study.tell(trial, state=TrialState.FAIL)
            if retry is not None:
                queue_continuation(study, storage.get_trial(trial._trial_id), **retry)
            return done(TrialState.FAIL, None, reason)
        for k, v in (
            ("best_step", result.best_step), ("steps", result.steps),
            ("train_seconds", round(result.train_seconds, 3)),
            ("tokens_per_second", round(result.tokens_per_second, 1)),
            ("data_seconds", round(result.data_seconds, 3)),
            ("resumed_from_step", result.resumed_from_step),
            ("best_scores", _scores_attr(result.best_scores)),
        ):
            trial.set_user_attr(k, v)
        study.tell(trial, result.value)
    return done(TrialState.COMPLETE, result.value, resumed=result.resumed_from_step)


def _oom_error() -> type:
    import torch

    return torch.OutOfMemoryError


def _free_accelerator_memory() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def _scores_attr(scores: dict) -> dict:
    return {k: v for k, v in scores.items() if isinstance(v, (int, float, dict))}


# ----------------------------------------------------------------------------- keep / export


def tidy(study: optuna.Study, cfg: StudyConfig) -> None:
    """Drop what no later step needs; export the best trial's model as a plain HF folder.

    Workers sharing the output folder tidy one at a time, so that one does not delete the
    weights another is exporting, nor two write the same temporary folder.
    """
    with file_lock(cfg.out / ".tidy.lock"):
        _tidy(study, cfg)


def _tidy(study: optuna.Study, cfg: StudyConfig) -> None:
    trials = study.get_trials(deepcopy=False)
    try:
        best = study.best_trial
    except ValueError:
        best = None
    # Folders whose checkpoints (and best weights) a continuation has yet to adopt.
    wanted = {t.system_attrs.get(A_DIR) for t in trials if t.state == TrialState.WAITING}
    wanted |= {t.system_attrs.get(A_FROM) for t in trials if t.state == TrialState.RUNNING}
    for t in trials:
        if t.state in (TrialState.RUNNING, TrialState.WAITING) or A_DIR not in t.system_attrs:
            continue
        if t.system_attrs[A_DIR] in wanted:
            continue
        d = Path(t.system_attrs[A_DIR])
        if cfg.keep != "all":
            shutil.rmtree(d / "checkpoints", ignore_errors=True)
        if cfg.keep != "all" and (best is None or t.number != best.number):
            shutil.rmtree(d / "best", ignore_errors=True)
    if best is not None:
        export_best(cfg, best)


def export_best(cfg: StudyConfig, best: FrozenTrial) -> Path | None:
    """``<output_dir>/best-model``: loadable with AutoModelForTokenClassification, no hpsearch."""
    weights = Path(best.system_attrs.get(A_DIR, "")) / "best" / "model.safetensors"
    target = cfg.out / "best-model"
    marker = target / "hpsearch-trial.json"
    if marker.exists() and json.loads(marker.read_text()).get("number") == best.number:
        return target
    if not weights.exists():
        return None
    from safetensors.torch import load_file

    from hpsearch.trainer import prepare
    from hpsearch.trainer.modeling import build_model

    tcfg = cfg.trainer_for(best.params)
    prep = prepare(tcfg, data_dir(cfg), cfg.out / "cache")
    model = build_model(tcfg, prep.tokenizer, prep.labels)
    model.load_state_dict(load_file(weights))
    tmp = cfg.out / ".best-model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a one-shard bar per export is noise in the trial lines
    model.save_pretrained(tmp)
    prep.tokenizer.save_pretrained(tmp)
    (tmp / "hpsearch-trial.json").write_text(
        json.dumps({"number": best.number, "value": best.value, "params": best.params})
    )
    old = cfg.out / ".best-model.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    shutil.rmtree(old, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- the run


@dataclass
class RunSummary:
    ran: list[TrialOutcome]
    recovered: list[int]
    total: int
    n_trials: int
    best_value: float | None
    best_params: dict[str, Any] | None
    best_number: int | None


def start_study(cfg: StudyConfig, *, allow_changes: bool = False,
                create: bool = True) -> optuna.Study:
    """Open (or create) the study for running, after checking the settings did not change."""
    cfg.out.mkdir(parents=True, exist_ok=True)
    study = open_study(cfg, create=create)
    check_unchanged(study, cfg, allow_changes)
    for k, v in (("backend", cfg.backend.name), ("pruner", cfg.pruner.name),
                 ("metric", cfg.metric)):
        if study.user_attrs.get(k) != v:
            study.set_user_attr(k, v)
    space = json.dumps({k: repr(d) for k, d in distributions(cfg.search_space).items()})
    if study.user_attrs.get("search_space") != space:
        study.set_user_attr("search_space", space)
    return study


def run(
    cfg: StudyConfig,
    *,
    allow_changes: bool = False,
    on_trial: Callable[[TrialOutcome, optuna.Study], None] | None = None,
) -> RunSummary:
    """Run the study up to ``cfg.n_trials`` trials in total; safe to call again after a stop."""
    study = start_study(cfg, allow_changes=allow_changes)
    with study_lock(cfg.storage_url, cfg.name):
        recovered = recover_interrupted(study)

    from hpsearch.trainer import prepare

    ran: list[TrialOutcome] = []
    deadline = time.time() + cfg.timeout if cfg.timeout else None
    with StopRequest() as stop:
        while work_left(study, cfg.n_trials) and not stop():
            if deadline is not None and time.time() >= deadline:
                break
            # After the count check: a finished study touches no data. Once per trial, so each
            # trial logs what its data cost: the first builds or reads the cache, the rest
            # find it in memory.
            prep = prepare(cfg.trainer, data_dir(cfg), cfg.out / "cache")
            trial, more = claim_trial(study, cfg)
            recovered += more
            if trial is None:
                break
            outcome = run_trial(study, trial, cfg, prep, stop)
            ran.append(outcome)
            if on_trial is not None:
                on_trial(outcome, study)
            if outcome.reason == DISK_FULL:  # every next trial would fail the same way
                raise DiskFull(disk_full_message(outcome, cfg))
            tidy(study, cfg)
    return summarize(study, cfg, ran, recovered)


def summarize(study, cfg, ran, recovered) -> RunSummary:
    try:
        best = study.best_trial
    except ValueError:
        best = None
    return RunSummary(
        ran=ran,
        recovered=recovered,
        total=n_counted(study),
        n_trials=cfg.n_trials,
        best_value=best.value if best else None,
        best_params=best.params if best else None,
        best_number=best.number if best else None,
    )

"""Many processes, one study: a pool of workers on this machine, each trial in its own process.

``hpsearch run STUDY.yaml --workers 4`` starts four workers that share the study through its
storage, exactly like four ``hpsearch worker`` commands on four machines would. Each worker
claims a trial (``study.claim_trial``: count and ask under the study lock, so ``n_trials``
holds), runs it in a child process and waits for it. A crash, an OOM kill or GPU memory that
a trial leaks ends with that child; the worker records the failure and claims the next trial.

Why fork: a fresh interpreter spends seconds importing torch and transformers and reading the
tokenized data back. The pool's main process imports them and prepares the data once; workers
are forks of it and each trial a fork of its worker, which starts in milliseconds and shares
those pages copy-on-write. Nothing before the trial touches CUDA, which is what makes forking
safe on a GPU machine; the trial initialises CUDA in its own process and frees all of it when
it exits. Where fork is not the platform's way (macOS, Windows), processes are spawned.

Stopping. Workers run in their own process group, so a Ctrl-C in the terminal reaches the
main process only, and every process gets exactly one request per press. First request: the
main process asks each worker to stop (SIGTERM), each worker asks its running trial, the trial
checkpoints, marks itself interrupted and queues its continuation, and the run exits 130. A
second request kills the workers at once; their trials stay RUNNING and the next run resumes
them. Every process dies with its parent (PR_SET_PDEATHSIG), so a killed worker leaves no
training behind, and its trial (both processes gone) is recovered by any other worker.

A repeated SIGTERM is the same request, not a second one: a scheduler ending a job (Slurm's
scancel, requeue, preemption, time limit) sends TERM to every process of it at once, so each
of ours hears it from outside and again from its parent, and counted twice it would kill the
trials before they checkpoint. Only a second SIGINT (Ctrl-C) stops at once, and the
scheduler's own SIGKILL once its grace has passed.

A worker that finds nothing left to claim waits while other trials are still running: if one
of their workers dies, someone has to run the continuation.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from multiprocessing.connection import wait

import optuna
from optuna.trial import TrialState

from hpsearch.attrs import A_GPU, A_PID, A_REASON, CRASHED, DISK_FULL, INTERRUPTED, work_left
from hpsearch.children import die_with_parent
from hpsearch.config import StudyConfig
from hpsearch.errors import DiskFull, StudyInterrupted
from hpsearch.export import tidy
from hpsearch.fused import run_fused
from hpsearch.opening import data_dir, open_study
from hpsearch.optuna_compat import storage_of, trial_id
from hpsearch.recovery import interrupt, others_running, recover_interrupted
from hpsearch.storage import study_lock
from hpsearch.study import RunSummary, start_study, summarize
from hpsearch.trial import (
    StopRequest,
    TrialOutcome,
    claim_trial,
    disk_full_message,
    more_work,
    record_failure,
    run_trial,
)

POLL = 1.0  # seconds between looks at a study that has nothing to claim but trials in flight
_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _context() -> mp.context.BaseContext:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        return mp.get_context("spawn")  # a forked child cannot use CUDA its parent started
    return mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")


def _tell(pid: int | None, sig: int) -> None:
    """Signal a child that may have just exited (a signal handler must not raise for it)."""
    if pid:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold stop signals while forking: a child unblocks them once its own handlers are in,
    so a stop sent in between is delivered to those handlers, not lost or misread."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _term_once(stop: StopRequest) -> None:
    """A trial process takes SIGTERM once: the scheduler's and its worker's are one request
    (see the module's docstring); a repeated SIGINT still stops it at once."""
    first = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame) -> None:
        if not stop():
            first(signum, frame)

    signal.signal(signal.SIGTERM, on_term)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (by hand, or by the kernel's OOM killer)" if -code == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exit code {code}"


def preload(cfg: StudyConfig) -> None:
    """Import what a trial imports, once, before forking: transformers loads model code lazily,
    and BERT's module alone takes seconds, which every fresh trial process would pay again."""
    import transformers

    from hpsearch.trainer import loop  # noqa: F401  (torch, seqeval, safetensors)

    if cfg.trainer.model == "scratch":
        transformers.BertForTokenClassification  # noqa: B018  (the attribute is the import)
        return
    from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING

    from hpsearch.trainer.modeling import resolve_source

    try:
        config = transformers.AutoConfig.from_pretrained(resolve_source(cfg.trainer.model))
        MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING[type(config)]
    except Exception:  # the trial reports a bad model source properly; this is only a warm-up
        pass


# ----------------------------------------------------------------------------- one trial


def _trial_process(cfg: StudyConfig, tid: int, prep, conn, parent: int) -> None:
    """The child that trains one trial and reports it; everything it allocates dies with it."""
    die_with_parent(parent)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)  # not the worker's handlers
    study = open_study(cfg)
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # what this trial could see, for the record
        storage_of(study).set_trial_system_attr(tid, A_GPU, os.environ["CUDA_VISIBLE_DEVICES"])
    trial = optuna.Trial(study, tid)
    code = 0
    with StopRequest() as stop:
        _term_once(stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # held since the fork
        try:
            outcome = run_trial(study, trial, cfg, prep, stop)
        except StudyInterrupted:
            t = storage_of(study).get_trial(tid)
            outcome = TrialOutcome(t.number, t.state, None, t.params, 0.0, INTERRUPTED)
            code = 130
    if code == 0 and outcome.reason != DISK_FULL:
        tidy(study, cfg)
    conn.send(outcome)
    conn.close()
    sys.exit(code)


def _after_exit(study: optuna.Study, trial: optuna.Trial, exitcode: int | None,
                stopping: bool, seconds: float) -> TrialOutcome:
    """The outcome of a trial whose process ended without reporting one."""
    storage = storage_of(study)
    t = storage.get_trial(trial_id(trial))
    if t.state == TrialState.RUNNING:
        if stopping:  # stopped before it could checkpoint: resume from the last one there is
            interrupt(study, trial_id(trial))
        else:
            record_failure(study, trial, CRASHED,
                           f"trial process died: {_describe_exit(exitcode)}")
        t = storage.get_trial(trial_id(trial))
    return TrialOutcome(t.number, t.state, t.value, t.params, seconds,
                        t.system_attrs.get(A_REASON))


# ----------------------------------------------------------------------------- one worker


def _worker(cfg: StudyConfig, index: int, gpu: str | None, conn, prep, deadline: float | None,
            parent: int) -> None:
    """Claim, run in a child, report; until the study needs nothing more from anyone."""
    die_with_parent(parent)
    os.setpgid(0, 0)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    label = f"w{index}" + (f"/gpu{gpu}" if gpu is not None else "")
    ctx = _context()
    state: dict = {"stop": False, "child": None}

    def on_signal(signum, frame) -> None:
        child = state["child"]
        if state["stop"] and signum == signal.SIGTERM:
            return  # the same request, from the scheduler and from the pool
        if state["stop"]:  # second request: stop at once; the trial is recovered later
            if child is not None:
                _tell(child.pid, signal.SIGKILL)
            os._exit(130)
        state["stop"] = True
        if child is not None:
            _tell(child.pid, signal.SIGTERM)

    for sig in _STOP_SIGNALS:
        signal.signal(sig, on_signal)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # held since the fork

    study = open_study(cfg)
    worker_name = f"{socket.gethostname()}:{os.getpid()} {label}"
    while not state["stop"]:
        if deadline is not None and time.time() >= deadline:
            break
        if cfg.trainer.fuse > 1:  # a child trains fused arrays and claims their trials itself
            if not more_work(study, cfg):
                if others_running(study):
                    time.sleep(POLL)
                    continue
                break
            if _fused_round(cfg, study, prep, conn, state, ctx, worker_name, label, deadline):
                break  # the disk is full: the next round would fail the same way
            continue
        trial, recovered = claim_trial(study, cfg, worker=worker_name)
        if recovered:
            conn.send(("recovered", recovered))
        if trial is None:
            if others_running(study):
                time.sleep(POLL)
                continue
            break
        if state["stop"]:
            interrupt(study, trial_id(trial))
            break
        t0 = time.time()
        child, recv = _start_child(ctx, state, _trial_process, f"hpsearch-trial-{trial.number}",
                                   cfg, trial_id(trial), prep)
        try:
            outcome = recv.recv()  # returns when the child reports, or at EOF when it dies
        except EOFError:
            outcome = None
        child.join()
        state["child"] = None
        recv.close()
        if outcome is None:
            outcome = _after_exit(study, trial, child.exitcode, state["stop"], time.time() - t0)
        conn.send(("trial", replace(outcome, worker=label, seconds=time.time() - t0)))
        if outcome.reason == DISK_FULL:  # the next trial would fail the same way
            break
    conn.close()
    sys.exit(130 if state["stop"] else 0)


def _start_child(ctx, state: dict, target, name: str, *args):
    """A child process ``target(*args, conn, parent)`` and the end of its pipe we read."""
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=target, name=name, args=(*args, send, os.getpid()))
    with _signals_held():
        child.start()
        state["child"] = child
        if state["stop"]:  # asked before there was a child to tell
            _tell(child.pid, signal.SIGTERM)
    send.close()
    return child, recv


def _fused_process(cfg: StudyConfig, prep, worker: str, deadline: float | None, conn,
                   parent: int) -> None:
    """The child that trains fused arrays until the study needs no more; reports each trial."""
    die_with_parent(parent)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)  # not the worker's handlers
    study = open_study(cfg)
    code = 0
    with StopRequest() as stop:
        _term_once(stop)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # held since the fork
        try:
            feed = run_fused(study, cfg, prep, stop, deadline=deadline, worker=worker,
                             worker_pid=parent, on_trial=lambda o, _: conn.send(("trial", o)))
            conn.send(("recovered", feed.recovered))
        except StudyInterrupted:
            code = 130
    conn.close()
    sys.exit(code)


def _fused_round(cfg: StudyConfig, study: optuna.Study, prep, conn, state: dict, ctx,
                 worker: str, label: str, deadline: float | None) -> bool:
    """Run one fused child to its end and relay what it reports; True if the disk filled."""
    t0 = time.time()
    child, recv = _start_child(ctx, state, _fused_process, "hpsearch-fused", cfg, prep,
                               worker, deadline)
    full = False
    while True:
        try:
            kind, payload = recv.recv()
        except EOFError:
            break
        if kind == "trial":
            full = full or payload.reason == DISK_FULL
            payload = replace(payload, worker=label)
        conn.send((kind, payload))
    child.join()
    state["child"] = None
    recv.close()
    # Trials the child left running died with it: record them as a dead trial process's.
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.system_attrs.get(A_PID) == child.pid:
            trial = optuna.Trial(study, trial_id(t))
            outcome = _after_exit(study, trial, child.exitcode, state["stop"], time.time() - t0)
            conn.send(("trial", replace(outcome, worker=label)))
    return full


# ----------------------------------------------------------------------------- the pool


def gpu_slots(gpus: Sequence[str], workers: int | None, trials_per_gpu: int,
              gpus_per_trial: int = 1) -> list[str | None]:
    """Which GPUs each worker sees: the listed GPUs in groups of ``gpus_per_trial``
    consecutive ones (one trial's devices, ``devices_per_trial``), ``trials_per_gpu`` workers
    per group, round robin. ``0,1,2,3`` in pairs: two workers, ``0,1`` and ``2,3``."""
    if not gpus:
        return [None] * (workers or 1)
    groups = [",".join(gpus[i:i + gpus_per_trial])
              for i in range(0, len(gpus) - gpus_per_trial + 1, gpus_per_trial)]
    n = workers or len(groups) * trials_per_gpu
    return [groups[i % len(groups)] for i in range(n)]


def run_pool(
    cfg: StudyConfig,
    slots: Sequence[str | None],
    *,
    allow_changes: bool = False,
    join: bool = False,
    on_trial: Callable[[TrialOutcome, optuna.Study], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    on_recovered: Callable[[list[int]], None] | None = None,
) -> RunSummary:
    """Run the study with one worker per slot (a GPU id or None) until it needs no more trials.

    ``join`` only joins a study that exists (``hpsearch worker``): a mistyped name on a second
    machine must not start a study of its own. Raises ``StudyInterrupted`` after a Ctrl-C.
    """
    note = on_note or (lambda msg: None)
    study = start_study(cfg, allow_changes=allow_changes, create=not join)
    heard = on_recovered or (lambda numbers: None)
    with study_lock(cfg.storage_url, cfg.name):
        recovered = recover_interrupted(study)
    if recovered:
        heard(recovered)
    ran: list[TrialOutcome] = []
    if not more_work(study, cfg):
        return summarize(study, cfg, ran, recovered)

    from hpsearch.trainer import prepare

    procs: dict[int, tuple[int, mp.process.BaseProcess]] = {}
    readers = {}
    stops = {"n": 0}

    def on_signal(signum, frame) -> None:
        if stops["n"] and signum == signal.SIGTERM:
            return  # the same request, from the scheduler and from a batch script's trap
        stops["n"] += 1
        first = stops["n"] == 1
        if first:
            note("stopping: the running trials write a checkpoint "
                 "(press Ctrl-C again to stop at once)")
        for _, p in procs.values():
            _tell(p.pid, signal.SIGTERM if first else signal.SIGKILL)

    old = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        # The tokenizer's thread pool does not survive fork; the trials do not need it.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        prep = prepare(cfg.trainer, data_dir(cfg), cfg.out / "cache")
        preload(cfg)
        if stops["n"]:
            raise StudyInterrupted("stopped before any trial started")
        deadline = time.time() + cfg.timeout if cfg.timeout else None
        ctx = _context()
        with _signals_held():  # a worker takes its own handlers before it hears a stop
            for i, gpu in enumerate(slots):
                recv, send = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_worker, name=f"hpsearch-worker-{i}",
                                args=(cfg, i, gpu, send, prep, deadline, os.getpid()))
                p.start()
                send.close()
                procs[p.sentinel] = (i, p)
                readers[recv] = i
        while procs or readers:
            for obj in wait([*readers, *procs], timeout=POLL):
                if obj in readers:
                    try:
                        kind, payload = obj.recv()
                    except EOFError:
                        del readers[obj]
                        continue
                    if kind == "trial":
                        ran.append(payload)
                        if on_trial is not None:
                            on_trial(payload, study)
                    else:
                        recovered += payload
                        if payload:
                            heard(payload)
                else:
                    i, p = procs.pop(obj)
                    p.join()
                    if stops["n"] < 2 and (p.exitcode not in (0, 130)
                                           or (p.exitcode == 130 and not stops["n"])):
                        note(f"worker {i} (pid {p.pid}) ended: {_describe_exit(p.exitcode)}; "
                             "its trial is resumed by another worker or the next run")
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    if stops["n"] >= 2:
        raise StudyInterrupted("stopped at once; run again to resume the trials")
    full = [o for o in ran if o.reason == DISK_FULL]
    if full:
        raise DiskFull(disk_full_message(full[0], cfg))
    tidy(study, cfg)
    if stops["n"] and work_left(study, cfg.n_trials):
        raise StudyInterrupted("the running trials checkpointed; run again to resume")
    return summarize(study, cfg, ran, recovered)

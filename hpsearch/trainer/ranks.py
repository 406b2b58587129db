"""Starting a trial's ranks (``devices_per_trial: N``): rank 0 starts ranks 1..N-1 as its own
children and joins them in one process group; each child runs ``train`` with its ``Group``
(distributed.py says what the ranks share and how a failure is read) and says how it ended.

On CPU ranks are forked (milliseconds, sharing the prepared data) unless OpenMP may have
started threads here that a forked child would wait for forever (a forked child that computes
on more than one thread after its parent did hangs in GNU OpenMP). On CUDA, and in that case,
they are spawned (a fresh interpreter: seconds of imports, small beside a GPU trial): merely
asking whether CUDA is there (``torch.cuda.is_available``, the trial's provenance) initialises
the driver, and a forked child could not use it.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import multiprocessing as mp
import os
import signal
import sys
import time
import traceback
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch
import torch.distributed as dist

from hpsearch.children import die_with_parent
from hpsearch.trainer.distributed import DEFAULT_TIMEOUT, TIMEOUT_ENV, Group, destroy

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

#: Whether this process may have computed on OpenMP threads (see the module's docstring).
_computed = False


def computing() -> None:
    """This process trains from now on: a rank forked after it could hang in OpenMP."""
    global _computed
    _computed = True



def timeout_seconds() -> float:
    return float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT)


def device_of(cfg, rank: int) -> torch.device:
    """Rank r's device: the r-th visible GPU on CUDA (the worker's ``--gpus`` group)."""
    from hpsearch.trainer.runtime import resolve_device

    device = resolve_device(cfg.device)
    return torch.device("cuda", rank) if device.type == "cuda" else device


def start(cfg, prep, out_dir: Path, log: logging.Logger, metric: str, maximize: bool) -> Group:
    """Rank 0: start ranks 1..N-1 and join them in one process group."""
    from hpsearch.trainer.state import TrialStopped

    world = cfg.devices_per_trial
    device = device_of(cfg, 0)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda" and torch.cuda.device_count() < world:
        raise TrialStopped(
            "config", f"devices_per_trial: {world} needs {world} GPUs; this trial sees "
            f"{torch.cuda.device_count()} (CUDA_VISIBLE_DEVICES="
            f"{os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')})")
    if backend == "nccl":  # a timed-out collective raises in its caller, not a watchdog abort
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")
    threads = cfg.num_threads or max(1, torch.get_num_threads() // world)
    timeout = timeout_seconds()
    group = Group(0, world, backend, device, threads, timeout)
    group.log = log
    forked = sys.platform.startswith("linux") and backend == "gloo" \
        and not torch.cuda.is_initialized() and (threads == 1 or not _computed)
    ctx = mp.get_context("fork" if forked else "spawn")
    try:
        with _signals_held():
            for r in range(1, world):
                mine, theirs = ctx.Pipe()
                proc = ctx.Process(
                    target=_rank_main, name=f"hpsearch-rank-{r}", daemon=False,
                    args=(cfg, prep, out_dir, metric, maximize, r, world, backend, threads,
                          timeout, theirs, os.getpid()))
                proc.start()
                theirs.close()
                group.children[r] = (proc, mine)
        store = dist.TCPStore("127.0.0.1", 0, world, is_master=True, wait_for_workers=False,
                              timeout=datetime.timedelta(seconds=timeout))
        for _, conn in group.children.values():
            conn.send(store.port)
        _wait_ready(group, time.monotonic() + max(timeout, 120))
        _init(group, store)
    except BaseException:
        group.close()
        raise
    log.info("%d ranks under torch.distributed (%s, %d thread(s) each, %s): ranks %s; each "
             "step's batch split across them", world, backend, threads,
             "forked" if forked else "spawned",
             ", ".join(f"{r} pid {p.pid}" for r, (p, _) in group.children.items()))
    return group


def _wait_ready(group: Group, deadline: float) -> None:
    """Until every child has joined the store (imports done), or one of them died."""
    from hpsearch.trainer.state import RankDied

    waiting = dict(group.children)
    while waiting:
        left = deadline - time.monotonic()
        if left <= 0:
            raise RankDied(f"ranks {sorted(waiting)} did not start within the timeout")
        ready = wait([c for _, c in waiting.values()] + [p.sentinel for p, _ in waiting.values()],
                     timeout=left)
        for r, (proc, conn) in list(waiting.items()):
            if conn in ready:
                try:
                    msg = conn.recv()
                except (EOFError, OSError):
                    msg = ("gone",)
                if msg[0] == "ready":
                    del waiting[r]
                    continue
                group.reports[r] = msg
            if conn in ready or proc.sentinel in ready:
                raise group.failure(RuntimeError(f"rank {r} ended while starting"))


def _init(group: Group, store) -> None:
    if group.device.type == "cuda":
        torch.cuda.set_device(group.device)
    dist.init_process_group(group.backend, store=store, rank=group.rank,
                            world_size=group.world,
                            timeout=datetime.timedelta(seconds=group.timeout))


def _rank_main(cfg, prep, out_dir: Path, metric: str, maximize: bool, rank: int, world: int,
               backend: str, threads: int, timeout: float, conn: Connection,
               parent: int) -> None:
    """A rank other than 0: join the group, train, say how it ended."""
    die_with_parent(parent)
    for sig in _STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)  # rank 0 decides when to stop, and tells us
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)  # held since the start
    import threading

    from tqdm.auto import tqdm

    from hpsearch.trainer import loop, state

    # It draws no progress bar: a thread lock for tqdm, not the semaphore a spawned process's
    # quick exit (below) would leave to the resource tracker.
    tqdm.set_lock(threading.RLock())
    code = 1
    try:
        port = conn.recv()
        store = dist.TCPStore("127.0.0.1", port, world, is_master=False,
                              timeout=datetime.timedelta(seconds=timeout))
        group = Group(rank, world, backend, device_of(cfg, rank), threads, timeout)
        conn.send(("ready",))
        _init(group, store)
        try:
            result = loop.train(cfg, prep, out_dir, metric=metric, maximize=maximize,
                                group=group)
        finally:
            destroy()
        report, code = ("done", result.steps), 0
    except state.TrialPrunedAt as e:
        report, code = ("pruned", e.step), 0
    except state.Interrupted as e:
        report, code = ("interrupted", str(e)), 0
    except state.TrialStopped as e:
        report = ("stopped", e.reason, str(e))
    except (MemoryError, torch.OutOfMemoryError) as e:
        report = ("oom", f"{type(e).__name__}: {e}"[:1000])
    except BaseException as e:  # noqa: BLE001  (whatever it was, rank 0 must hear it)
        tb = "".join(traceback.format_exception(e))[-3000:]
        report = ("error", f"{type(e).__name__}: {e}"[:1000], tb)
    with contextlib.suppress(OSError):
        conn.send(report)
    conn.close()
    # At once: nothing here needs tearing down, and a spawned interpreter's teardown of torch
    # takes seconds (rank 0 would kill it meanwhile).
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def quiet_logger() -> logging.Logger:
    """A rank other than 0 logs nothing: train.log is rank 0's."""
    log = logging.getLogger("hpsearch.rank")
    log.propagate = False
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    return log


@contextlib.contextmanager
def _signals_held():
    """Hold stop signals while starting a rank: it ignores them once it can."""
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)

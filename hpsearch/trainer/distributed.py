"""One trial on several devices: ``devices_per_trial: N`` trains it as N processes under
``torch.distributed`` (NCCL on CUDA, gloo on CPU), started by ranks.py, not by a torchrun
wrapper.

Rank 0 is the process ``train`` was called in: the trial process, the one that claimed the
trial and reports it. It starts ranks 1..N-1 as its own children, which run ``train`` as well
and write nothing: no log, no metrics, no checkpoint, no weights, and they never ask the study.

What the ranks agree on, and how:

* the batches. Every rank cuts every epoch's batches from the seed, as one process would; a
  step's batch is split into N consecutive runs of its windows (``batching.micro_batches``, the
  split of gradient accumulation), one a rank, each split again for accumulation. Each rank's
  loss is weighted by its labelled tokens over the whole batch's, and the gradients are summed
  across ranks (one all-reduce of flat buckets): the sum is the one-process gradient of the
  whole batch up to the order of the additions. So the global batch is the one-device batch
  and a search result does not depend on how many devices ran it.
* the weights. Rank 0's are broadcast once at the start (after a resume, which every rank reads
  from the checkpoint rank 0 chose); from then on every rank takes the same update of the same
  gradient, so they stay equal without another broadcast.
* the decisions. After each evaluation rank 0 judges (history, best, the pruner) and broadcasts
  go on / early stop / pruned; at each sync point it broadcasts whether a stop was requested.
  Every rank therefore stops at the same step. Evaluation is sharded: each rank scores every
  N-th validation batch and rank 0 gathers the predictions and computes F1 once, on all of them.

A rank that dies: the others' next collective fails (gloo notices a closed peer at once; NCCL
at the collective timeout, ``HPSEARCH_DDP_TIMEOUT`` seconds, 300 by default, which also bounds
how long rank 0 may write a checkpoint while the others wait). Rank 0 then asks its children
what happened: one that raised (out of memory, a NaN loss, a bug) says so through its pipe and
rank 0 raises the same kind of error, recorded as the trial's failure; one that was killed
without a word raises ``RankDied``, an ``Interrupted``: the trial is recorded interrupted and
its continuation resumes from its last checkpoint, on any number of devices (a checkpoint is
the one-process format). Rank 0 ends whatever ranks are left, whatever the way out; a rank dies
with rank 0 (PR_SET_PDEATHSIG) and ignores Ctrl-C and SIGTERM: stopping is rank 0's to decide.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import time
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from hpsearch.trainer.batching import micro_batches

TIMEOUT_ENV = "HPSEARCH_DDP_TIMEOUT"
DEFAULT_TIMEOUT = 300.0
BUCKET = 1 << 24  # elements per all-reduce of gradients: 64 MB of fp32 in flight at a time
GO, EARLY_STOP, PRUNED = 0, 1, 2  # what rank 0 decided after an evaluation
#: A rank ended by one of these was stopped from outside and its trial resumes; a crash
#: (SIGSEGV, SIGABRT, an exit code) is the trial's failure, or it would resume forever.
_KILLED = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}

class Group:
    """This process's place among a trial's N ranks, and the collectives the loop needs.

    On rank 0 every collective that fails is turned into the error the trial should be
    recorded with (``failure``); on the others it just ends the rank.
    """

    def __init__(self, rank: int, world: int, backend: str, device: torch.device,
                 threads: int | None, timeout: float):
        self.rank, self.world, self.backend, self.device = rank, world, backend, device
        self.threads, self.timeout = threads, timeout
        self.children: dict[int, tuple[mp.process.BaseProcess, Connection]] = {}
        self.reports: dict[int, tuple] = {}
        self.log: logging.Logger | None = None

    @property
    def leads(self) -> bool:
        return self.rank == 0

    # ----------------------------------------------------------------------- the work shared

    def share(self, idx: np.ndarray) -> np.ndarray:
        """This rank's windows of a global batch: consecutive ones, as even as rows allow."""
        parts = micro_batches(idx, self.world)
        return parts[self.rank] if self.rank < len(parts) else idx[:0]

    def reduce_gradients(self, params: list[torch.nn.Parameter], loss: torch.Tensor
                         ) -> torch.Tensor:
        """Sum every rank's ``.grad`` (its share of the batch's gradient) and loss, in place.

        A parameter without a gradient on a rank (no labelled token came its way) counts as
        zeros there, and stays without one only if no rank has one: AdamW steps a zero
        gradient (moments, weight decay) but skips a missing one, as one process would.
        """
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.float32,
                           device=self.device)
        tail = torch.cat([has, loss.detach().float().reshape(1).to(self.device)])
        self._call(dist.all_reduce, tail)
        flags = tail[:-1].tolist()
        live = [p for p, f in zip(params, flags) if f]
        for bucket in _buckets(live):
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                              for p in bucket])
            self._call(dist.all_reduce, flat)
            at = 0
            for p in bucket:
                g = flat[at:at + p.numel()].view_as(p)
                at += p.numel()
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.copy_(g)
        return tail[-1].to(loss.dtype)

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` on rank 0 (in rank order); None elsewhere."""
        out = [None] * self.world if self.leads else None
        self._call(dist.gather_object, obj, out, dst=0)
        return out

    # ----------------------------------------------------------------------- rank 0 decides

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        self._call(dist.broadcast_object_list, box, src=0)
        return box[0]

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (a stop request, at a sync point)."""
        t = torch.tensor([int(flag)], dtype=torch.int32, device=self.device)
        self._call(dist.broadcast, t, src=0)
        return bool(t.item())

    def decide(self, code: int = GO, value: float = 0.0) -> tuple[int, float]:
        """After an evaluation: rank 0 says (GO | EARLY_STOP | PRUNED, its value) to all."""
        t = torch.tensor([code, value], dtype=torch.float64, device=self.device)
        self._call(dist.broadcast, t, src=0)
        return int(t[0].item()), float(t[1].item())

    def sync_weights(self, model: torch.nn.Module) -> None:
        """Rank 0's weights and buffers on every rank: they start equal, whatever the init."""
        with torch.no_grad():
            for t in model.state_dict().values():
                self._call(dist.broadcast, t, src=0)

    # ----------------------------------------------------------------------- failures

    def _call(self, fn, *args, **kw):
        try:
            return fn(*args, **kw)
        except Exception as e:
            if not self.leads:
                raise
            raise self.failure(e) from e

    def failure(self, e: BaseException) -> BaseException:
        """The error a failed collective means for the trial: a rank's own error if one
        reported it, else ``RankDied`` (the trial is interrupted and resumes)."""
        from hpsearch.trainer.state import RankDied, TrialStopped

        self._collect(time.monotonic() + 5)
        for r, report in sorted(self.reports.items()):
            kind = report[0]
            if kind == "oom":
                return torch.OutOfMemoryError(f"rank {r}: {report[1]}")
            if kind == "stopped":
                return TrialStopped(report[1], f"rank {r}: {report[2]}")
            if kind == "error":
                return RankFailed(f"rank {r}: {report[1]}\n{report[2]}")
        for r, (proc, _) in sorted(self.children.items()):
            code = proc.exitcode
            if code is None:
                continue
            if -code in _KILLED:  # from outside (by hand, a scheduler, the OOM killer)
                return RankDied(f"rank {r} (pid {proc.pid}) {_describe_exit(code)}; "
                                "the trial resumes from its last checkpoint")
            return RankFailed(f"rank {r} (pid {proc.pid}) ended without a word: "
                              f"{_describe_exit(code)} (its stderr says why)")
        return RankDied(f"a collective failed with every rank alive ({str(e)[:300]}); the "
                        "trial resumes from its last checkpoint")

    def _collect(self, deadline: float) -> None:
        """Read what the children said until each has reported or gone, or ``deadline``."""
        for r, (proc, conn) in self.children.items():
            while r not in self.reports:
                left = deadline - time.monotonic()
                ready = wait([conn, proc.sentinel], timeout=max(0.0, left))
                if conn in ready or conn.poll():
                    try:
                        msg = conn.recv()
                    except (EOFError, OSError):
                        msg = ("gone",)
                    if msg[0] != "ready":
                        self.reports[r] = msg
                    continue
                if proc.sentinel in ready:  # dead, and nothing left in the pipe
                    self.reports[r] = ("gone",)
                if left <= 0:
                    break
            if self.reports.get(r, ("",))[0] == "gone":
                # Its pipes close as it exits, a moment before its exit code can be read.
                proc.join(timeout=2)

    # ----------------------------------------------------------------------- the end

    def close(self, wait: bool = False) -> None:
        """Rank 0: leave the group, end the others, and log how each ended. ``wait``: they
        were told to end as we do (done, pruned, a stop) and are given a moment for it; else
        they may be waiting in a collective for us, and are killed at once."""
        destroy()
        if wait:
            self._collect(time.monotonic() + 10)
        for r, (proc, conn) in self.children.items():
            if proc.exitcode is None and wait:
                proc.join(timeout=1)
            if proc.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.join(timeout=5)
            conn.close()
            if self.log is not None:
                self.log.info("rank %d (pid %d) ended: %s; %s", r, proc.pid,
                              _describe_report(self.reports.get(r, ("killed",))),
                              _describe_exit(proc.exitcode))


def rng_state(device: torch.device) -> dict[str, str]:
    """This rank's torch RNG states (its dropout masks come from them), as JSON text."""
    out = {"cpu": torch.get_rng_state().numpy().tobytes().hex()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device).numpy().tobytes().hex()
    return out


def seed_rank(seed: int, group: Group, step: int) -> None:
    """A rank above 0 draws its own dropout masks: seeded like rank 0 (the one-process run),
    the ranks would drop the same units in their shares of a batch. Rank 0 keeps the seed."""
    if group.rank:
        torch.manual_seed(int(np.random.SeedSequence([seed, group.rank, step])
                              .generate_state(1)[0]))


def set_rng_state(saved: list[dict[str, str]] | None, group: Group, device: torch.device,
                  seed: int, step: int) -> None:
    """A rank above 0, resumed: its own RNG state from a checkpoint written by as many ranks
    (the uninterrupted run's masks, bit for bit); else a stream of its own from the step on."""
    if not saved or len(saved) != group.world:
        seed_rank(seed, group, step)
        return
    mine = saved[group.rank]

    def tensor(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(bytes.fromhex(text)), dtype=torch.uint8)

    torch.set_rng_state(tensor(mine["cpu"]))
    if device.type == "cuda" and "cuda" in mine:
        torch.cuda.set_rng_state(tensor(mine["cuda"]), device)


class RankFailed(RuntimeError):
    """Another rank of the trial raised an error: the trial fails with it."""


def _buckets(params: list[torch.nn.Parameter]):
    """Consecutive parameters of one dtype, about ``BUCKET`` elements a group."""
    cur: list[torch.nn.Parameter] = []
    size = 0
    for p in params:
        if cur and (size + p.numel() > BUCKET or p.dtype != cur[0].dtype):
            yield cur
            cur, size = [], 0
        cur.append(p)
        size += p.numel()
    if cur:
        yield cur


def destroy() -> None:
    if dist.is_available() and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def _describe_report(report: tuple) -> str:
    kind = report[0]
    if kind == "done":
        return f"done at step {report[1]}"
    if kind == "pruned":
        return f"pruned at step {report[1]}"
    if kind == "interrupted":
        return f"interrupted ({report[1]})"
    if kind == "stopped":
        return f"stopped: {report[1]}"
    if kind in ("oom", "error"):
        return f"failed: {report[1]}"
    return "no report"

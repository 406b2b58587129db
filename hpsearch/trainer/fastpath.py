"""How a trial's batches are shaped and its model is run: the fast path and its fallbacks.

At 32 sentences a step a GPU waits on kernel launches, not arithmetic: static shapes let each
bucket's forward and backward be captured once as a CUDA graph and replayed, and keeping the
host from reading device values every step lets the CPU run ahead. A CPU gains from neither,
pads only to what the batch needs, and takes cheaper dropout masks and attention instead
(kernels.py). Whatever fails to compile falls back to the plain model, which always works.

Gradient accumulation runs every micro-batch through the same Runner, each shaped like its
bucket's others (fixed rows: a full batch's rows split in ``gradient_accumulation_steps``).
Gradient checkpointing takes the CUDA-graph path off: the plan says so in the trial's log.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from hpsearch.config import TrainerConfig
from hpsearch.trainer.batching import bucket_of, bucket_widths, collate, rows_for
from hpsearch.trainer.runtime import autocast


@dataclass
class Plan:
    """How batches are shaped and the model is run, decided once per trial and logged."""

    widths: tuple[int, ...] | None  # bucket widths on the fast path, else pad to `multiple`
    multiple: int
    sync_every: int  # steps between host reads of the on-device loss check
    graphs: bool  # torch.compile(mode="reduce-overhead"): CUDA graphs, one per shape
    compiled: bool
    why: str
    cpu_kernels: bool = False  # dropout masks and attention from trainer/kernels.py


def make_plan(cfg: TrainerConfig, device: torch.device) -> Plan:
    """The fast path where it applies (CUDA, or forced), the plain loop everywhere else."""
    cuda = device.type == "cuda"
    multiple = 8 if cuda else 1
    sync_every = 0 if cuda else 1  # 0: filled in with the logging interval
    # On a CPU the fast path is cheaper dropout masks and attention (see kernels.py); a
    # compiled model fuses those itself.
    kernels = not cuda and cfg.fast_path != "off" and not cfg.compile
    if cfg.fast_path == "off":
        return Plan(None, multiple, sync_every, False, cfg.compile, "fast path off")
    if cuda and cfg.gradient_checkpointing:  # recomputation inside captured graphs: untested
        return Plan(None, multiple, sync_every, False, cfg.compile,
                    "fast path off (gradient_checkpointing: no CUDA graphs)")
    if cfg.fast_path == "auto" and not cuda:
        why = "fast path: CPU kernels" if kernels else "fast path off (compiled)"
        return Plan(None, multiple, sync_every, False, cfg.compile, why, kernels)
    widths = bucket_widths(cfg.buckets, cfg.max_length)
    graphs = cuda and _has_triton()
    why = f"fast path: buckets {list(widths)}"
    if cuda and not graphs:
        why += ", no triton: eager"
    elif not cuda:
        why += ", no CUDA: no graphs" + (", CPU kernels" if kernels else "")
    return Plan(widths, multiple, sync_every, graphs, graphs or cfg.compile, why, kernels)


def plan_batch(plan: Plan, enc, idx: np.ndarray, pad_id: int, cfg: TrainerConfig
               ) -> dict[str, torch.Tensor]:
    """A step's batch as the plan shapes it: on the fast path, its bucket's one fixed shape
    (width and rows), so each bucket is compiled and captured once. A micro-batch of gradient
    accumulation has a share of a full batch's rows (rounded up: the largest share)."""
    if plan.widths is None:
        return collate(enc, idx, pad_id, multiple=plan.multiple)
    width = bucket_of(int(enc.lengths[idx].max()), plan.widths)
    rows = rows_for(width, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size)
    rows = -(-rows // cfg.gradient_accumulation_steps)
    return collate(enc, idx, pad_id, width=width, rows=rows)


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


def forward_backward(net, batch, device, amp, scaler, weight: float | None = None,
                     watch=None) -> torch.Tensor:
    """Forward and backward of one batch; its loss. ``weight``: the share of an accumulated
    update's gradient this micro-batch carries (its loss is scaled by it, the loss returned is
    not). ``watch``: a context around the forward only (the monitor's hooks: a recomputed
    forward of gradient checkpointing, in the backward, is not watched twice)."""
    with watch if watch is not None else nullcontext(), autocast(device, amp):
        loss = net(**batch).loss
    scaled = loss if weight is None else loss * weight
    (scaler.scale(scaled) if scaler is not None else scaled).backward()
    return loss


class FellBack(Exception):
    """The compiled model failed on a new shape and the plain one takes over from now on;
    the gradients of the update so far were dropped, so it is to be computed again."""


class Runner:
    """Runs a step's forward and backward through the compiled model while it works.

    A shape's first compile can fail (an unsupported op, a compiler bug); the trial then goes
    on with the plain model, logged once, rather than failing. Checkpoints always hold the
    plain model's names: the compiled wrapper shares its parameters.
    """

    def __init__(self, model: torch.nn.Module, plan: Plan, device: torch.device,
                 amp: torch.dtype | None, scaler, log: logging.Logger):
        self.model, self.plan, self.device, self.amp, self.scaler = model, plan, device, amp, \
            scaler
        self.log = log
        self.net = model
        if plan.graphs:
            self.net = torch.compile(model, mode="reduce-overhead", dynamic=False)
        elif plan.compiled:
            self.net = torch.compile(model)
        self.shapes_run: set[tuple[int, ...]] = set()
        self._aside: list[tuple[torch.nn.Parameter, torch.Tensor]] | None = None

    def capture(self, batches: list[np.ndarray], width_of, make_batch, optimizer) -> None:
        """Compile and record every bucket's graph before the first step, not in the middle.

        Two passes per shape: CUDA graph trees record on the second call. The RNG is put back
        afterwards, so a resumed trial draws exactly what the uninterrupted one did.
        """
        if not self.plan.graphs:
            return
        t0 = time.perf_counter()
        first: dict[int, np.ndarray] = {}
        for idx in batches:
            first.setdefault(width_of(idx), idx)
        device = self.device
        gpus = [device.index if device.index is not None else torch.cuda.current_device()]
        try:
            with torch.random.fork_rng(devices=gpus):
                for width in sorted(first):
                    batch = {k: v.to(device) for k, v in make_batch(first[width]).items()}
                    for _ in range(2):
                        torch.compiler.cudagraph_mark_step_begin()
                        forward_backward(self.net, batch, device, self.amp, self.scaler)
                        for p in self.net.parameters():
                            p.grad = None
                    self.shapes_run.add(tuple(batch["input_ids"].shape))
            torch.cuda.synchronize(device)
            self.log.info("captured %d shapes in %.1fs: %s", len(self.shapes_run),
                          time.perf_counter() - t0, sorted(self.shapes_run))
        except Exception as e:
            if isinstance(e, torch.OutOfMemoryError):
                raise
            self._fall_back(e)
        optimizer.zero_grad(set_to_none=True)

    def forward_backward(self, batch: dict[str, torch.Tensor], optimizer,
                         weight: float | None = None, watch=None) -> torch.Tensor:
        """One batch's forward and backward (see ``forward_backward``). Falling back to the
        plain model drops the gradients so far: an accumulated update starts again."""
        shape = tuple(batch["input_ids"].shape)
        if self.plan.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            loss = forward_backward(self.net, batch, self.device, self.amp, self.scaler,
                                    weight, watch)
        except Exception as e:
            if (self.net is self.model or shape in self.shapes_run
                    or isinstance(e, torch.OutOfMemoryError)):
                raise
            self._fall_back(e)
            optimizer.zero_grad(set_to_none=True)
            self._aside = None
            raise FellBack from e
        self.shapes_run.add(shape)
        return loss

    def set_aside(self) -> None:
        """Between an accumulated update's micro-batches: the gradients so far, kept apart.

        A CUDA graph's backward writes each gradient into memory the graph owns, and autograd
        keeps that tensor as ``.grad``; the graphs' next replays may write over it, and
        autograd's accumulation into it then gives wrong sums (pytorch/pytorch#169545). So
        between micro-batches the gradients are summed in memory of their own; on every other
        path autograd's own accumulation is right and this does nothing. (One optimizer step a
        batch, the rule without accumulation, reads ``.grad`` before the next replay.)
        """
        if not self.grads_borrowed():
            return
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self._aside is None:
            self._aside = [(p, p.grad.clone()) for p in params]
        else:
            kept = {id(p): g for p, g in self._aside}
            for p in params:
                if id(p) in kept:
                    kept[id(p)].add_(p.grad)
                else:
                    self._aside.append((p, p.grad.clone()))
        for p in params:
            p.grad = None

    def grads_borrowed(self) -> bool:
        """Whether ``.grad`` after a backward is memory of a CUDA graph's (see set_aside)."""
        return self.plan.graphs

    def gather(self) -> None:
        """After an update's last micro-batch: the gradients set aside back in ``.grad``."""
        if self._aside is None:
            return
        for p, g in self._aside:
            if p.grad is None:
                p.grad = g
            else:
                p.grad = g.add_(p.grad)
        self._aside = None

    def _fall_back(self, e: Exception) -> None:
        self.log.warning("torch.compile failed, continuing without it: %s: %s",
                         type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        self.net, self.plan.graphs = self.model, False

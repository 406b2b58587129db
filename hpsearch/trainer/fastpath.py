"""How a trial's batches are shaped and its model is run: the fast path and its fallbacks.

At 32 sentences a step a GPU waits on kernel launches, not arithmetic: static shapes let each
bucket's forward and backward be captured once as a CUDA graph and replayed, and keeping the
host from reading device values every step lets the CPU run ahead. A CPU gains from neither,
pads only to what the batch needs, and takes cheaper dropout masks and attention instead
(kernels.py). Whatever fails to compile falls back to the plain model, which always works.
"""

from __future__ import annotations

import logging
import time
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
    (width and rows), so each bucket is compiled and captured once."""
    if plan.widths is None:
        return collate(enc, idx, pad_id, multiple=plan.multiple)
    width = bucket_of(int(enc.lengths[idx].max()), plan.widths)
    rows = rows_for(width, max_tokens=cfg.max_tokens, batch_size=cfg.batch_size)
    return collate(enc, idx, pad_id, width=width, rows=rows)


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


def forward_backward(net, batch, device, amp, scaler) -> torch.Tensor:
    with autocast(device, amp):
        loss = net(**batch).loss
    (scaler.scale(loss) if scaler is not None else loss).backward()
    return loss


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

    def forward_backward(self, batch: dict[str, torch.Tensor], optimizer) -> torch.Tensor:
        shape = tuple(batch["input_ids"].shape)
        if self.plan.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        try:
            loss = forward_backward(self.net, batch, self.device, self.amp, self.scaler)
        except Exception as e:
            if (self.net is self.model or shape in self.shapes_run
                    or isinstance(e, torch.OutOfMemoryError)):
                raise
            self._fall_back(e)
            optimizer.zero_grad(set_to_none=True)
            loss = forward_backward(self.model, batch, self.device, self.amp, self.scaler)
        self.shapes_run.add(shape)
        return loss

    def _fall_back(self, e: Exception) -> None:
        self.log.warning("torch.compile failed, continuing without it: %s: %s",
                         type(e).__name__, str(e).splitlines()[0] if str(e) else "")
        self.net, self.plan.graphs = self.model, False

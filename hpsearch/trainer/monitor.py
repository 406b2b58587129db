"""The trainer's health signals: where a diverging or dying run shows itself before its F1 does.

Three schedules, by cost. Every step: loss and learning rate (kept on the device, written at the
loop's sync points, so the hot loop never waits for them). Every ``monitor_every`` steps: the
gradient norm of each layer and each encoder layer's output statistics, because a blow-up starts
in one layer's gradients many steps before the loss turns NaN, and a layer whose outputs
collapse to zero or saturate has stopped learning. Forward hooks are attached for those steps
only, so the other steps run exactly the model they would without a monitor. Every evaluation:
its latency and the peak memory (evaluation.py and the loops).

A fused array is monitored the same way, member by member: its rows are ``K * B`` and its
stacked gradients ``[K, ...]``, so every figure comes out ``[K]`` long.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

NEAR_ZERO = 1e-2  # |x| below this counts as a dead unit
SATURATED = 6.0  # |x| above this: far in a LayerNorm output's tail, where softmax/GELU saturate

_LAYER = re.compile(r"^(?P<list>.*?\.(?:layer|layers|h|block|blocks))\.(?P<i>\d+)$")


def _layer_list(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The repeated blocks of the encoder (``…encoder.layer.N``), in order."""
    found: dict[str, list[tuple[int, str, nn.Module]]] = {}
    for name, module in model.named_modules():
        m = _LAYER.match(name)
        if m:
            found.setdefault(m["list"], []).append((int(m["i"]), name, module))
    if not found:
        return []
    longest = max(found.values(), key=len)
    return [(name, module) for _, name, module in sorted(longest, key=lambda t: t[0])]


def _group_of(name: str, layers: list[str], wrappers: set[str]) -> str:
    """``bert.encoder.layer.3.attention.self.query.weight`` -> ``layer.3``; the rest by their
    first name under the base model and its wrappers: ``embeddings``, ``classifier``."""
    for i, prefix in enumerate(layers):
        if name.startswith(prefix + "."):
            return f"layer.{i}"
    parts = name.split(".")
    while len(parts) > 2 and parts[0] in wrappers:
        parts = parts[1:]
    return parts[0]


class Monitor:
    """Per-layer gradient norms and encoder-layer output statistics, on the steps due.

    ``members``: 1 for a solo model, K for a fused one (its parameters' first axis is the
    member, its layers' rows are member-major).
    """

    def __init__(self, model: nn.Module, every: int, members: int = 1):
        self.every, self.members = every, members
        blocks = _layer_list(model)
        self.layers = [m for _, m in blocks]
        names = [n for n, _ in blocks]
        params = list(model.named_parameters())
        wrappers = {"net", "_orig_mod"} | {
            getattr(m, "base_model_prefix", "") for m in model.modules()} - {""}
        self.groups: dict[str, list[nn.Parameter]] = {}
        for name, p in params:
            if p.requires_grad:
                self.groups.setdefault(_group_of(name, names, wrappers), []).append(p)
        self.mask: torch.Tensor | None = None
        self._acts: list[torch.Tensor] = []

    def due(self, step: int) -> bool:
        """Whether optimizer step ``step`` (1-based, the one about to be taken) is monitored."""
        return self.every > 0 and step % self.every == 0

    @contextmanager
    def watching(self, attention_mask: torch.Tensor):
        """Hooks on every encoder layer for one forward; statistics over real tokens only."""
        self.mask = attention_mask.reshape(-1, attention_mask.shape[-1]).bool()
        self._acts = []
        handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            self.mask = None

    @torch.no_grad()
    def _hook(self, module: nn.Module, args: Any, output: Any) -> None:
        x = output[0] if isinstance(output, (tuple, list)) else output
        x = x.detach().float()  # [rows, T, H]
        keep = self.mask.to(x.device).unsqueeze(-1).float()  # [rows, T, 1]
        k = self.members
        x, keep = x.reshape(k, -1, x.shape[-1]), keep.reshape(k, -1, 1)
        n = (keep.sum(dim=(1, 2)) * x.shape[-1]).clamp_min(1)  # [K] real values
        mean = (x * keep).sum(dim=(1, 2)) / n
        var = (((x - mean.view(k, 1, 1)) ** 2) * keep).sum(dim=(1, 2)) / n
        a = x.abs()
        near_zero = ((a < NEAR_ZERO).float() * keep).sum(dim=(1, 2)) / n
        saturated = ((a > SATURATED).float() * keep).sum(dim=(1, 2)) / n
        self._acts.append(torch.stack([mean, var.sqrt(), near_zero, saturated], dim=1))

    @torch.no_grad()
    def grad_norms(self) -> torch.Tensor:
        """``[K, groups]`` gradient norms, after unscaling and before clipping; on the device."""
        k = self.members
        out = []
        for params in self.groups.values():
            grads = [p.grad for p in params if p.grad is not None]
            if not grads:
                out.append(torch.zeros(k, device=params[0].device))
                continue
            sq = sum(g.float().reshape(k, -1).pow(2).sum(dim=1) for g in grads)
            out.append(sq.sqrt())
        return torch.stack(out, dim=1)

    def take_activations(self) -> torch.Tensor | None:
        """``[K, layers, 4]`` statistics of the forward just watched; on the device."""
        acts = torch.stack(self._acts, dim=1) if self._acts else None
        self._acts = []
        return acts

    def rows(self, norms: torch.Tensor, acts: torch.Tensor | None) -> list[dict[str, float]]:
        """One dict per member: ``grad_norm/<group>`` and ``act/layer.N/<stat>`` (one sync)."""
        norms_l = norms.tolist()
        acts_l = acts.tolist() if acts is not None else None
        out = []
        for m in range(self.members):
            row = {"grad_norm/global": sum(n * n for n in norms_l[m]) ** 0.5}
            row.update({f"grad_norm/{g}": norms_l[m][j] for j, g in enumerate(self.groups)})
            if acts_l is not None:
                for i, (mean, std, zero, sat) in enumerate(acts_l[m]):
                    row.update({f"act/layer.{i}/mean": mean, f"act/layer.{i}/std": std,
                                f"act/layer.{i}/near_zero": zero,
                                f"act/layer.{i}/saturated": sat})
            out.append(row)
        return out


@dataclass
class StepRow:
    """One optimizer step of a model's K members (1 for a solo run), still on the device.

    ``steps[m]`` is member m's own step count (None: an empty slot); ``loss`` and
    ``grad_norm`` are ``[K]`` (or a scalar for K = 1); ``norms``/``acts`` only on monitored steps.
    """

    steps: list[int | None]
    epochs: list[int]
    lrs: list[float]
    loss: torch.Tensor
    grad_norm: torch.Tensor | None = None
    norms: torch.Tensor | None = None
    acts: torch.Tensor | None = None


def steps_rows(pending: list[StepRow], monitor: Monitor) -> list[list[dict[str, Any]]]:
    """The metrics rows of ``pending`` steps, one list per member; losses and clipped norms
    of all the steps come off the device in one read."""
    k = len(pending[0].steps)
    losses = torch.stack([p.loss.reshape(k).float() for p in pending]).tolist()
    clipped = [p.grad_norm for p in pending if p.grad_norm is not None]
    clipped_l = iter(torch.stack([c.reshape(k).float() for c in clipped]).tolist()
                     if clipped else [])
    out: list[list[dict[str, Any]]] = [[] for _ in range(k)]
    for i, p in enumerate(pending):
        norm = next(clipped_l) if p.grad_norm is not None else None
        extra = monitor.rows(p.norms, p.acts) if p.norms is not None else None
        for m in range(k):
            if p.steps[m] is None:
                continue
            row: dict[str, Any] = {"step": p.steps[m], "loss": losses[i][m], "lr": p.lrs[m],
                                   "grad_norm": None if norm is None else norm[m],
                                   "epoch": p.epochs[m]}
            if extra is not None:
                row.update(extra[m])
            out[m].append(row)
    return out


def eval_health(seconds: float, sentences: int, device: torch.device) -> dict[str, Any]:
    """What an evaluation row carries besides the scores: latency and peak memory."""
    return {"eval_ms_per_sentence": 1000 * seconds / max(sentences, 1),
            "peak_memory_mb": peak_memory_mb(device)}


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak memory of this trial's device so far: the accelerator's, else the process's RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    except (ImportError, OSError):
        return None

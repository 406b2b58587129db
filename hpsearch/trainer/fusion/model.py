"""The fused model, and what each member needs of it: its loss and its clipping."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.trainer import kernels
from hpsearch.trainer.features import IGNORE
from hpsearch.trainer.fusion.layers import FUSED, FusedDropout, FusedEmbedding

# Attention modules only read their dropout's p and pass it to the attention function, which
# takes one float for all rows: those dropouts stay the model's own (``cfg.dropout`` does not
# change them either), and must agree across members.
_ATTENTION_ATTRS = ("scaling", "attention_head_size", "head_dim")


def _is_attention(parent: nn.Module) -> bool:
    return any(hasattr(parent, a) for a in _ATTENTION_ATTRS)


class FusedModel(nn.Module):
    """K models of one architecture as one: inputs ``[K, B, T]``, logits ``[K, B, T, C]``.

    Built from K models (K ``build_model`` calls: same config, any seeds), whose weights it
    copies; the members themselves are left as they were and may be dropped. ``net`` is the
    fused HF model (``K * B`` rows in, ``K * B`` rows out).
    """

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("FusedModel needs at least one member")
        self.k = len(members)
        keys = [list(m.state_dict().keys()) for m in members]
        if any(k != keys[0] for k in keys):
            raise ValueError("cannot fuse models with different state_dict keys")
        for m in members:
            names = [n for n, _ in m.named_parameters(remove_duplicate=False)]
            if len(names) != len(list(m.parameters())):
                raise ValueError("cannot fuse a model with tied (shared) parameters")
        template = members[0]
        net = copy.deepcopy(template)  # the structure; its weights are replaced below
        self._dropouts: list[FusedDropout] = []
        self._embeddings: list[FusedEmbedding] = []
        for name, module in list(template.named_modules()):
            for child_name, child in module.named_children():
                path = f"{name}.{child_name}" if name else child_name
                others = [m.get_submodule(path) for m in members]
                if any(type(o) is not type(child) for o in others):
                    raise ValueError(f"cannot fuse {path}: the members' module types differ")
                fused = self._fuse(path, child, others, module)
                if fused is not None:
                    net.get_submodule(name).register_module(child_name, fused)
            own = [n for n, p in module.named_parameters(recurse=False) if p is not None]
            if own and type(module) not in FUSED:
                raise ValueError(
                    f"cannot fuse {name or 'the model'} ({type(module).__name__}): it holds "
                    f"parameters {own} outside a Linear, LayerNorm or Embedding")
        self.net = net
        self._stacked = {n for n, _ in net.named_parameters()}
        self._keys = keys[0]
        shared = [k for k in self._keys if k not in self._stacked]
        if shared:  # buffers every member keeps in its state dict: one copy serves all
            sds = [m.state_dict() for m in members]
            for key in shared:
                if any(not torch.equal(sd[key], sds[0][key]) for sd in sds[1:]):
                    raise ValueError(f"cannot fuse: the members' buffer {key} differs")
        self._solo_ndim = {n: p.ndim - 1 for n, p in net.named_parameters()}

    def _fuse(self, path: str, child: nn.Module, others: list[nn.Module],
              parent: nn.Module) -> nn.Module | None:
        kind = type(child)
        if kind in FUSED:
            fused = FUSED[kind](others, path)
            if isinstance(fused, FusedEmbedding):
                self._embeddings.append(fused)
            return fused
        if kind in (nn.Dropout, kernels.Dropout):
            if _is_attention(parent):
                if len({o.p for o in others}) != 1:
                    raise ValueError(f"cannot fuse {path}: attention dropout differs between "
                                     "members")
                return None
            fused = FusedDropout(others)
            self._dropouts.append(fused)
            return fused
        return None

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        k, b, t = input_ids.shape
        if k != self.k:
            raise ValueError(f"inputs for {k} members given to a fused model of {self.k}")
        for emb in self._embeddings:
            emb.rows = b
        out = self.net(input_ids=input_ids.reshape(k * b, t),
                       attention_mask=attention_mask.reshape(k * b, t))
        return out.logits.view(k, b, t, -1)

    def member_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The stacked parameters under their solo names, in the solo ``parameters()`` order."""
        return list(self.net.named_parameters())

    def solo_ndim(self, name: str) -> int:
        return self._solo_ndim[name]

    def member_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Member k as a solo ``state_dict()``: same keys in the same order, copied tensors.

        Copies, not views: a caller keeping them (initial weights, a best model) keeps them
        as they were when taken.
        """
        self.check_member(k)
        sd = self.net.state_dict()
        return {key: (sd[key][k] if key in self._stacked else sd[key]).detach().clone()
                for key in self._keys}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, sd: dict[str, torch.Tensor]) -> None:
        """Member k takes a solo model's weights (a checkpoint, or fresh ones for a new trial)."""
        self.check_member(k)
        missing = [key for key in self._keys if key not in sd]
        extra = [key for key in sd if key not in self._keys]
        if missing or extra:
            raise ValueError(f"state dict does not fit the fused model: missing {missing[:5]}, "
                             f"unexpected {extra[:5]}")
        own = self.net.state_dict()
        for key in self._keys:
            target = own[key][k] if key in self._stacked else own[key]
            value = sd[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{key}: shape {tuple(value.shape)}, the fused member's is "
                                 f"{tuple(target.shape)}")
            if key in self._stacked:
                target.copy_(value)
            elif not torch.equal(value.to(target.device), target):
                raise ValueError(f"{key} is shared by the fused members; this state dict's "
                                 "differs")

    def set_dropout(self, k: int, p: float | None) -> None:
        """Member k's hidden dropout (``cfg.dropout``); None puts back the member's own."""
        self.check_member(k)
        if p is not None and not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        for d in self._dropouts:
            d.ps[k] = d.initial[k] if p is None else float(p)

    def check_member(self, k: int) -> None:
        if not 0 <= k < self.k:
            raise IndexError(f"member {k} of a fused model of {self.k}")


# ----------------------------------------------------------------------------- loss, clipping


def member_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[K]``: each member's mean cross-entropy over its labelled tokens (the HF loss).

    Sum them to backpropagate: member k's gradients are then those of its own loss. A member
    with no labelled token (an idle slot) gets 0 and no gradient, where the mean would be NaN.
    """
    k, c = logits.shape[0], logits.shape[-1]
    ce = F.cross_entropy(logits.reshape(-1, c).float(), labels.reshape(-1),
                         ignore_index=IGNORE, reduction="none").view(k, -1)
    n = (labels.reshape(k, -1) != IGNORE).sum(1)
    return ce.sum(1) / n.clamp(min=1)


def _per_member(values: Any, k: int, *, none: float, device: torch.device) -> torch.Tensor:
    if isinstance(values, torch.Tensor):
        out = values.to(device=device, dtype=torch.float32).reshape(-1)
    else:
        if not isinstance(values, (list, tuple)):
            values = [values] * k
        out = torch.tensor([none if v is None else float(v) for v in values],
                           dtype=torch.float32, device=device)
    if out.numel() != k:
        raise ValueError(f"{out.numel()} values given for {k} members")
    return out


def lead(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[K]`` -> ``[K, 1, ...]`` broadcasting against a stacked tensor of ``ndim`` dims."""
    return v.view(-1, *([1] * (ndim - 1)))


@torch.no_grad()
def clip_grad_norm_per_member(model: FusedModel, max_norm: Any) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for each member: returns the ``[K]`` total norms.

    ``max_norm``: one value, or one per member (list or tensor); None or inf leaves that
    member's gradients as they are, as the solo loop does without ``max_grad_norm``.
    """
    grads = [p.grad for _, p in model.member_parameters() if p.grad is not None]
    device = grads[0].device if grads else torch.device("cpu")
    if not grads:
        return torch.zeros(model.k, device=device)
    norms = torch.stack([torch.linalg.vector_norm(g.reshape(model.k, -1), dim=1)
                         for g in grads], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1)
    limit = _per_member(max_norm, model.k, none=math.inf, device=device)
    coef = torch.clamp(limit / (total + 1e-6), max=1.0)
    coef = torch.where(torch.isinf(limit), torch.ones_like(coef), coef)
    for g in grads:
        g.mul_(lead(coef.to(g.dtype), g.ndim))
    return total

"""K trials of one architecture trained as one model (horizontal fusion, as in HFTA).

A learning-rate or weight-decay search trains the same network on the same kind of batches
again and again; only the optimizer settings differ. Run one trial at a time and every kernel
of a small BERT is too small to keep the hardware busy. Run K trials as one model whose every
weight has a leading trial axis and each kernel does K times the work for one launch.

The fused model is the trials' own HF model with its ``Linear``, ``LayerNorm``, ``Embedding``
and ``Dropout`` submodules swapped for versions that hold ``[K, ...]`` weights. Its forward is
the HF forward on ``K * B`` rows, member ``k`` owning rows ``k*B .. (k+1)*B - 1``: a linear
layer is one batched matrix product over the trial axis, a layer norm normalises each row and
applies its member's scale, an embedding looks each member's ids up in its own table, and
attention, whose mask is per row, runs as the model has it, so members never mix.
(A ``torch.func.vmap`` of the functional model over stacked weights computed the same numbers
but was slower than K solo steps for K <= 4 on a CPU.) ``bench/fused_step.py`` measures a
fused step against K solo steps.

Members must be fed batches of one shape: ``stack_member_batches`` pads the others, and the
padding is computed like any token. Members that read the same batches (trials started
together, same data seed) or batches of one bucket (the fast path's fixed shapes) pay nothing
for it.

Everything a member owns can leave and enter in the solo formats: ``member_state_dict`` is
what a solo ``model.state_dict()`` holds, and ``FusedAdamW.member_state_dict`` is what the
solo loop's ``torch.optim.AdamW(..., fused=True).state_dict()`` holds after the same steps, so
a trial can move between a fused slot and a solo run (or a solo checkpoint) at any step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.trainer import kernels
from hpsearch.trainer.features import IGNORE

__all__ = [
    "FusedAdamW",
    "FusedDropout",
    "FusedEmbedding",
    "FusedLayerNorm",
    "FusedLinear",
    "FusedModel",
    "clip_grad_norm_per_member",
    "member_losses",
    "stack_member_batches",
]


def _stack(name: str, tensors: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) != 1:
        raise ValueError(f"cannot fuse {name}: the members' shapes differ ({sorted(shapes)})")
    return torch.stack([t.detach() for t in tensors]).contiguous()


def _param(name: str, tensors: list[torch.Tensor | None]) -> nn.Parameter | None:
    if all(t is None for t in tensors):
        return None
    if any(t is None for t in tensors):
        raise ValueError(f"cannot fuse {name}: some members have it, some do not")
    flags = {t.requires_grad for t in tensors}
    if len(flags) != 1:
        raise ValueError(f"cannot fuse {name}: trainable in some members, frozen in others")
    return nn.Parameter(_stack(name, tensors), requires_grad=flags.pop())


def _rows_of(x: torch.Tensor, k: int) -> None:
    if x.shape[0] % k:
        raise ValueError(f"{x.shape[0]} rows cannot be split among {k} fused members")


class FusedLinear(nn.Module):
    """K ``nn.Linear`` as one batched product over the trial axis.

    The weight is kept ``[K, out, in]`` so that member k's slice is its solo weight as it is:
    state dicts and optimizer moments go in and out without a transpose.
    """

    def __init__(self, members: list[nn.Linear], name: str = "linear"):
        super().__init__()
        self.k = len(members)
        self.in_features = members[0].in_features
        self.out_features = members[0].out_features
        self.weight = _param(f"{name}.weight", [m.weight for m in members])
        self.bias = _param(f"{name}.bias", [m.bias for m in members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _rows_of(x, self.k)
        lead = x.shape[:-1]
        x3 = x.reshape(self.k, -1, self.in_features)
        wt = self.weight.transpose(1, 2)
        if self.bias is None:
            out = torch.bmm(x3, wt)
        else:
            out = torch.baddbmm(self.bias.unsqueeze(1), x3, wt)
        return out.view(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"k={self.k}, in_features={self.in_features}, out_features={self.out_features}"


class FusedLayerNorm(nn.Module):
    """K ``nn.LayerNorm``: normalising has no weights, so all rows share one ``layer_norm``;
    only the scale and shift are the member's own."""

    def __init__(self, members: list[nn.LayerNorm], name: str = "layernorm"):
        super().__init__()
        self.k = len(members)
        self.normalized_shape = tuple(members[0].normalized_shape)
        eps = {m.eps for m in members}
        if len(eps) != 1 or any(tuple(m.normalized_shape) != self.normalized_shape
                                for m in members):
            raise ValueError(f"cannot fuse {name}: the members' eps or shapes differ")
        self.eps = eps.pop()
        self.weight = _param(f"{name}.weight", [m.weight for m in members])
        self.bias = _param(f"{name}.bias", [m.bias for m in members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _rows_of(x, self.k)
        y = F.layer_norm(x, self.normalized_shape, None, None, self.eps)
        if self.weight is None and self.bias is None:
            return y
        y3 = y.view(self.k, -1, *self.normalized_shape)
        shape = (self.k, 1, *self.normalized_shape)
        if self.weight is None:
            return (y3 + self.bias.view(shape)).view(x.shape)
        if self.bias is None:
            return (y3 * self.weight.view(shape)).view(x.shape)
        return torch.addcmul(self.bias.view(shape), y3, self.weight.view(shape)).view(x.shape)

    def extra_repr(self) -> str:
        return f"k={self.k}, {self.normalized_shape}, eps={self.eps}"


class _Lookup(torch.autograd.Function):
    """Rows of a flattened ``[K*V, H]`` table whose pad rows (one per member) learn nothing.

    ``F.embedding`` takes a single ``padding_idx``; the fused table has K of them.
    """

    @staticmethod
    def forward(ctx, table: torch.Tensor, ids: torch.Tensor, pad_rows: torch.Tensor | None):
        ctx.save_for_backward(ids, pad_rows)
        ctx.rows = table.shape[0]
        return F.embedding(ids, table)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        ids, pad_rows = ctx.saved_tensors
        g = torch.ops.aten.embedding_dense_backward(grad, ids, ctx.rows, -1, False)
        if pad_rows is not None:
            g.index_fill_(0, pad_rows, 0)
        return g, None, None


class FusedEmbedding(nn.Module):
    """K ``nn.Embedding``: member k's rows read member k's table.

    Ids come either one row per batch row (``[K*B, ...]``) or one row shared by every batch
    row, as BERT's position ids (``[1, T]``, or expanded with stride 0): a shared row is looked
    up once per member and broadcast over the member's ``rows`` rows, which the fused model
    sets before each forward.
    """

    def __init__(self, members: list[nn.Embedding], name: str = "embedding"):
        super().__init__()
        first = members[0]
        for m in members:
            if m.max_norm is not None or m.scale_grad_by_freq or m.sparse:
                raise ValueError(f"cannot fuse {name}: max_norm, scale_grad_by_freq and sparse "
                                 "embeddings are not supported")
            if m.padding_idx != first.padding_idx:
                raise ValueError(f"cannot fuse {name}: the members' padding_idx differ")
        self.k = len(members)
        self.num_embeddings = first.num_embeddings
        self.embedding_dim = first.embedding_dim
        self.padding_idx = first.padding_idx
        self.rows = 1
        self.weight = _param(f"{name}.weight", [m.weight for m in members])
        offsets = torch.arange(self.k, device=self.weight.device) * self.num_embeddings
        self.register_buffer("offsets", offsets, persistent=False)

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` ``[K, n]`` -> ``[K, n, H]``."""
        flat = (ids + self.offsets.view(self.k, 1)).reshape(-1)
        table = self.weight.view(-1, self.embedding_dim)
        pad = None
        if self.padding_idx is not None:
            pad = self.offsets + self.padding_idx
        return _Lookup.apply(table, flat, pad).view(self.k, -1, self.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = ids.shape[0]
        if n == 1 or (ids.dim() > 1 and ids.stride(0) == 0):
            rows = self.rows if n == 1 else n // self.k
            one = ids[:1].reshape(1, -1).expand(self.k, -1)
            out = self._lookup(one).unsqueeze(1)  # [K, 1, n, H]
            out = out.expand(self.k, rows, *out.shape[2:])
            return out.reshape(self.k * rows, *ids.shape[1:], self.embedding_dim)
        _rows_of(ids, self.k)
        out = self._lookup(ids.reshape(self.k, -1))
        return out.view(*ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return (f"k={self.k}, {self.num_embeddings}, {self.embedding_dim}, "
                f"padding_idx={self.padding_idx}")


def _member_mask(shape: torch.Size, ps: Sequence[float], dtype: torch.dtype,
                 device: torch.device, fast: bool) -> torch.Tensor:
    """Bernoulli(1 - p_k) / (1 - p_k) over member k's rows, drawn like kernels.dropout_mask."""
    k = len(ps)
    n = shape.numel()
    if fast and device.type == "cpu":
        seed = int(torch.randint(0, 2**62, (1,)).item())
        bits = np.random.SFC64(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
        below = np.array([min(round(p * 2**32), 2**32 - 1) for p in ps], dtype=np.uint32)
        scale = np.array([1 / (1 - p) for p in ps], dtype=np.float32)
        mask = np.where(bits.reshape(k, -1) >= below[:, None], scale[:, None], np.float32(0))
        return torch.from_numpy(mask).view(shape).to(dtype)
    p = torch.tensor(ps, dtype=torch.float32, device=device).view(k, 1)
    keep = torch.rand(k, n // k, device=device) >= p
    return (keep / (1 - p)).view(shape).to(dtype)


class FusedDropout(nn.Module):
    """Dropout with a probability per member (``cfg.dropout`` may be a searched parameter).

    Masks come from kernels.py's generator where the members used its ``Dropout`` (the CPU
    fast path), else from torch's, as the solo model would draw them; the masks themselves
    differ from a solo run's, as two seeds' do.
    """

    def __init__(self, members: list[nn.Dropout]):
        super().__init__()
        self.k = len(members)
        self.ps = [float(m.p) for m in members]
        self.initial = list(self.ps)
        self.fast = all(isinstance(m, kernels.Dropout) for m in members)

    @property
    def p(self) -> float:
        """The members' common probability; code outside the forward sometimes reads it."""
        if len(set(self.ps)) != 1:
            raise ValueError(f"fused members use different dropout probabilities {self.ps}")
        return self.ps[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not any(self.ps):
            return x
        if len(set(self.ps)) == 1:
            if self.fast:
                return kernels.masked_dropout(x, self.ps[0], True)
            return F.dropout(x, self.ps[0], True)
        _rows_of(x, self.k)
        return x * _member_mask(x.shape, self.ps, x.dtype, x.device, self.fast)

    def extra_repr(self) -> str:
        return f"p={self.ps}"


_FUSED: dict[type, type] = {
    nn.Linear: FusedLinear,
    nn.LayerNorm: FusedLayerNorm,
    nn.Embedding: FusedEmbedding,
}

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
            if own and type(module) not in _FUSED:
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
        if kind in _FUSED:
            fused = _FUSED[kind](others, path)
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
        self._check(k)
        sd = self.net.state_dict()
        return {key: (sd[key][k] if key in self._stacked else sd[key]).detach().clone()
                for key in self._keys}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, sd: dict[str, torch.Tensor]) -> None:
        """Member k takes a solo model's weights (a checkpoint, or fresh ones for a new trial)."""
        self._check(k)
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
        self._check(k)
        if p is not None and not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        for d in self._dropouts:
            d.ps[k] = d.initial[k] if p is None else float(p)

    def _check(self, k: int) -> None:
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


def _lead(v: torch.Tensor, ndim: int) -> torch.Tensor:
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
        g.mul_(_lead(coef.to(g.dtype), g.ndim))
    return total


# ----------------------------------------------------------------------------- optimizer


def _solo_group_template() -> list[dict[str, Any]]:
    """The param_groups torch's AdamW(fused=True) writes, defaults and key order included."""
    a, b = torch.zeros(1, 1), torch.zeros(1)
    opt = torch.optim.AdamW([{"params": [a], "weight_decay": 0.0},
                             {"params": [b], "weight_decay": 0.0}], fused=True)
    return opt.state_dict()["param_groups"]


class FusedAdamW:
    """AdamW with its own lr, weight decay, betas, eps and step count per member.

    torch's AdamW maths: decoupled decay ``p *= 1 - lr * wd``, bias corrections from each
    member's own step count, ``denom = sqrt(v) / sqrt(1 - beta2^t) + eps``. As in the solo
    loop's ``param_groups``, weights that are 1-D in the solo model (biases, LayerNorm) are not
    decayed. Master weights stay fp32.

    Two ways to run it, same numbers. ``fused=True`` (the default where torch has a fused
    AdamW kernel for the device: CPU and CUDA) calls that kernel once per member and group on
    the member's slices of the stacked tensors: one pass over memory, the solo optimizer's own
    arithmetic, 2K calls a step. ``fused=False`` updates every stacked tensor for all members
    at once, the per-member numbers broadcast over the trial axis: ten element-wise passes per
    tensor, which on a CPU made the optimizer 2-6x slower than the kernel calls (K = 1-8).
    """

    def __init__(self, model: FusedModel, *, weight_decay: Any, betas: Any, eps: Any,
                 lr: Any = 1e-3, fused: bool | None = None):
        self.model = model
        self.k = k = model.k
        named = [(n, p) for n, p in model.member_parameters() if p.requires_grad]
        if not named:
            raise ValueError("FusedAdamW: the fused model has no trainable parameters")
        self.params = [p for _, p in named]
        self.decays = [model.solo_ndim(n) >= 2 for n, _ in named]
        # The solo optimizer numbers its parameters group by group: decayed ones first.
        self.solo_order = ([i for i, d in enumerate(self.decays) if d]
                           + [i for i, d in enumerate(self.decays) if not d])
        self.exp_avg = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                        for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p, memory_format=torch.contiguous_format)
                           for p in self.params]
        self.steps = [0] * k
        self.weight_decay = self._floats(weight_decay, "weight_decay")
        self.eps = self._floats(eps, "eps")
        if isinstance(betas, tuple) and len(betas) == 2 and not isinstance(betas[0], tuple):
            betas = [betas] * k
        betas = list(betas)
        if len(betas) != k:
            raise ValueError(f"{len(betas)} betas given for {k} members")
        self.betas = [(float(b1), float(b2)) for b1, b2 in betas]
        self.lr = self._floats(lr, "lr")
        self._groups = _solo_group_template()
        device = self.params[0].device
        if fused is None:
            fused = (hasattr(torch, "_fused_adamw_") and device.type in ("cpu", "cuda")
                     and all(p.is_contiguous() for p in self.params))
        self.fused = fused
        # Member k's slices of every stacked tensor, as the kernel takes them: views, which
        # stay valid because weights and moments are only ever updated in place.
        self._slices = [
            [list(col) for col in zip(*(t.detach().unbind(0) for t in tensors))]
            for tensors in (self.params, self.exp_avg, self.exp_avg_sq)
        ]
        self._step_t = [torch.zeros((), dtype=torch.float32, device=device) for _ in range(k)]
        self._groups_of = [[i for i, d in enumerate(self.decays) if d],
                           [i for i, d in enumerate(self.decays) if not d]]

    def _floats(self, values: Any, what: str) -> list[float]:
        if isinstance(values, torch.Tensor):
            values = values.tolist()
        if not isinstance(values, (list, tuple)):
            values = [values] * self.k
        if len(values) != self.k:
            raise ValueError(f"{len(values)} values of {what} given for {self.k} members")
        return [float(v) for v in values]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, lr: Any, active: torch.Tensor | Sequence[bool] | None = None) -> None:
        """One update of every active member with its learning rate ``lr[k]``.

        An inactive member (a finished or diverged trial, an idle slot) is not touched: its
        weights, moments and step count stay as they were.
        """
        lrs = self._floats(lr, "lr")
        if active is None:
            on = list(range(self.k))
        else:
            flags = active.tolist() if isinstance(active, torch.Tensor) else list(active)
            if len(flags) != self.k:
                raise ValueError(f"{len(flags)} active flags for {self.k} members")
            on = [i for i, a in enumerate(flags) if a]
        if not on:
            return
        for i in on:
            self.steps[i] += 1
            self.lr[i] = lrs[i]
        if self.fused:
            self._step_fused(on)
        else:
            self._step_vectorised(on)

    def _step_fused(self, on: list[int]) -> None:
        have = [i for i, p in enumerate(self.params) if p.grad is not None]
        grads = {i: self.params[i].grad.contiguous().unbind(0) for i in have}
        params, exp_avg, exp_avg_sq = self._slices
        for k in on:
            self._step_t[k].fill_(self.steps[k])
            b1, b2 = self.betas[k]
            for group, wd in zip(self._groups_of, (self.weight_decay[k], 0.0)):
                ids = [i for i in group if i in grads]
                if not ids:
                    continue
                torch._fused_adamw_(
                    [params[k][i] for i in ids], [grads[i][k] for i in ids],
                    [exp_avg[k][i] for i in ids], [exp_avg_sq[k][i] for i in ids], [],
                    [self._step_t[k]] * len(ids), lr=self.lr[k], beta1=b1, beta2=b2,
                    weight_decay=wd, eps=self.eps[k], amsgrad=False, maximize=False)

    def _step_vectorised(self, on: list[int]) -> None:
        device = self.params[0].device
        dtype = self.params[0].dtype
        cols: dict[str, list[float]] = {n: [] for n in
                                        ("keep", "c1", "b2", "c2", "bc2", "eps", "size")}
        for i in on:
            b1, b2 = self.betas[i]
            t = self.steps[i]
            lr = self.lr[i]
            # in double precision, then float32 in the update, as torch's fused kernel does
            cols["keep"].append(1 - lr * self.weight_decay[i])
            cols["c1"].append(1 - b1)
            cols["b2"].append(b2)
            cols["c2"].append(1 - b2)
            cols["bc2"].append(math.sqrt(1 - b2**t))
            cols["eps"].append(self.eps[i])
            cols["size"].append(-lr / (1 - b1**t))
        s = {n: torch.tensor(v, dtype=dtype, device=device) for n, v in cols.items()}
        index = None if len(on) == self.k else torch.tensor(on, device=device)
        for p, m, v, decays in zip(self.params, self.exp_avg, self.exp_avg_sq, self.decays):
            if p.grad is None:
                continue
            g = p.grad
            if index is None:
                _adamw(p, g, m, v, s, decays)
            else:
                ps, ms, vs = (t.index_select(0, index) for t in (p, m, v))
                _adamw(ps, g.index_select(0, index), ms, vs, s, decays)
                p.index_copy_(0, index, ps)
                m.index_copy_(0, index, ms)
                v.index_copy_(0, index, vs)

    # --------------------------------------------------------------------- solo state dicts

    def member_state_dict(self, k: int) -> dict[str, Any]:
        """What the solo loop's torch AdamW ``state_dict()`` would hold for member k.

        Tensors are copies: a solo optimizer that loads them keeps them as its own state and
        must not update ours in place.
        """
        self.model._check(k)
        state: dict[int, dict[str, torch.Tensor]] = {}
        if self.steps[k] > 0:
            for solo_index, i in enumerate(self.solo_order):
                p = self.params[i]
                state[solo_index] = {
                    "step": torch.tensor(float(self.steps[k]), dtype=torch.float32,
                                         device=p.device),
                    "exp_avg": self.exp_avg[i][k].clone(),
                    "exp_avg_sq": self.exp_avg_sq[i][k].clone(),
                }
        n_decay = sum(self.decays)
        groups = []
        for g, (wd, ids) in enumerate([
            (self.weight_decay[k], list(range(n_decay))),
            (0.0, list(range(n_decay, len(self.params)))),
        ]):
            group = {key: val for key, val in self._groups[g].items() if key != "params"}
            group.update(weight_decay=wd, lr=self.lr[k], betas=self.betas[k], eps=self.eps[k])
            group["params"] = ids
            groups.append(group)
        return {"state": state, "param_groups": groups}

    @torch.no_grad()
    def load_member_state_dict(self, k: int, sd: dict[str, Any]) -> None:
        """Member k continues from a solo AdamW ``state_dict()`` (a solo checkpoint's)."""
        self.model._check(k)
        groups = sd["param_groups"]
        n_decay = sum(self.decays)
        sizes = [len(g["params"]) for g in groups]
        if sizes != [n_decay, len(self.params) - n_decay]:
            raise ValueError(f"optimizer state has groups of {sizes} parameters; the fused "
                             f"model's are {[n_decay, len(self.params) - n_decay]}")
        if float(groups[1]["weight_decay"]) != 0.0:
            raise ValueError("optimizer state decays the 1-D parameters; the solo recipe "
                             "does not")
        if len({(tuple(g["betas"]), g["eps"], g["lr"]) for g in groups}) != 1:
            raise ValueError("optimizer state has per-group lr, betas or eps")
        ids = [i for g in groups for i in g["params"]]
        state = sd["state"]
        steps = set()
        moments = []
        for solo_index, i in zip(ids, self.solo_order):
            st = state.get(solo_index)
            if st is None:
                moments.append(None)
                continue
            shape = tuple(self.params[i].shape[1:])
            if tuple(st["exp_avg"].shape) != shape:
                raise ValueError(f"optimizer state {solo_index}: shape "
                                 f"{tuple(st['exp_avg'].shape)}, the parameter's is {shape}")
            steps.add(int(float(st["step"])))
            moments.append(st)
        if len(steps) > 1 or (steps and any(m is None for m in moments)):
            raise ValueError("optimizer state has parameters at different step counts")
        for st, i in zip(moments, self.solo_order):
            if st is None:
                self.exp_avg[i][k].zero_()
                self.exp_avg_sq[i][k].zero_()
            else:
                self.exp_avg[i][k].copy_(st["exp_avg"])
                self.exp_avg_sq[i][k].copy_(st["exp_avg_sq"])
        self.steps[k] = steps.pop() if steps else 0
        self.weight_decay[k] = float(groups[0]["weight_decay"])
        b1, b2 = groups[0]["betas"]
        self.betas[k] = (float(b1), float(b2))
        self.eps[k] = float(groups[0]["eps"])
        self.lr[k] = float(groups[0]["lr"])

    def reset_member(self, k: int, *, weight_decay: float | None = None,
                     betas: tuple[float, float] | None = None, eps: float | None = None,
                     lr: float | None = None) -> None:
        """A fresh optimizer for member k (a new trial in the slot), with its settings."""
        self.model._check(k)
        for m, v in zip(self.exp_avg, self.exp_avg_sq):
            m[k].zero_()
            v[k].zero_()
        self.steps[k] = 0
        if weight_decay is not None:
            self.weight_decay[k] = float(weight_decay)
        if betas is not None:
            self.betas[k] = (float(betas[0]), float(betas[1]))
        if eps is not None:
            self.eps[k] = float(eps)
        if lr is not None:
            self.lr[k] = float(lr)


def _adamw(p: torch.Tensor, g: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
           s: dict[str, torch.Tensor], decays: bool) -> None:
    """In place, for stacked tensors whose first axis matches the ``[K']`` scalars in ``s``.

    The operations and their order are those of torch's fused CPU AdamW kernel.
    """
    n = p.ndim
    if decays:
        p.mul_(_lead(s["keep"], n))
    m.lerp_(g, _lead(s["c1"], n))
    v.mul_(_lead(s["b2"], n)).addcmul_(g * _lead(s["c2"], n), g)
    denom = v.sqrt().div_(_lead(s["bc2"], n)).add_(_lead(s["eps"], n))
    p.addcdiv_(m * _lead(s["size"], n), denom)


# ----------------------------------------------------------------------------- batches


def stack_member_batches(batches: Sequence[dict[str, torch.Tensor] | None],
                         pad_id: int) -> dict[str, torch.Tensor]:
    """K ``collate`` batches of any shapes as one ``[K, Bmax, Tmax]`` batch.

    Members may be at different places of their epochs, so their batches differ in rows and
    width. Extra columns are pad tokens nobody attends to and nobody labels; extra rows (and a
    None batch, an idle slot) attend to one pad token, as ``collate``'s filler rows do, and
    carry no label: what each member computes for its own tokens does not change.
    """
    real = [b for b in batches if b is not None]
    rows = max((b["input_ids"].shape[0] for b in real), default=1)
    width = max((b["input_ids"].shape[1] for b in real), default=1)
    k = len(batches)
    ids = torch.full((k, rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((k, rows, width), dtype=torch.long)
    labels = torch.full((k, rows, width), IGNORE, dtype=torch.long)
    for i, b in enumerate(batches):
        r, t = (0, 0) if b is None else tuple(b["input_ids"].shape)
        if b is not None:
            ids[i, :r, :t] = b["input_ids"]
            mask[i, :r, :t] = b["attention_mask"]
            labels[i, :r, :t] = b["labels"]
        mask[i, r:, 0] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}

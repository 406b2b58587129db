"""Linear, LayerNorm, Embedding and Dropout with a leading trial axis on their weights."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hpsearch.trainer import kernels


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


#: The module types whose weights fuse, and what each becomes.
FUSED: dict[type, type] = {
    nn.Linear: FusedLinear,
    nn.LayerNorm: FusedLayerNorm,
    nn.Embedding: FusedEmbedding,
}

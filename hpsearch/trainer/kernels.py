"""Cheaper CPU kernels for the two places a small BERT spends its step on bookkeeping.

On a CPU, a quarter of a small BERT's training step goes to drawing dropout masks: PyTorch
draws each element from a Mersenne twister (about 7 ns an element here), then divides and
multiplies in separate passes. And the SDPA "math" fallback that CPU attention with dropout
takes adds passes of its own (a guard against fully masked rows, a separate scale). The
model's maths does not need any of that:

* a dropout mask is Bernoulli(1 - p) scaled by 1 / (1 - p). Drawn as 32-bit integers from
  NumPy's SFC64 generator (raw 64-bit output, about 0.5 ns an element) and compared with
  ``p * 2**32``, it keeps each element with probability 1 - p to 2**-32. Each mask's
  generator is seeded from torch's own generator, so ``seed`` and the RNG state a checkpoint
  stores still decide every mask: the same seed trains the same model twice, and a resumed
  trial draws what the uninterrupted one did.
* attention is ``softmax(q k^T * scale + mask) v``, with dropout on the probabilities: one
  fused multiply-add for the scores, then the same steps as the eager reference.

Only the CPU gets these (on CUDA the compiled graphs draw their own masks), and the trainer
logs whether they are on. ``fast_path: off`` trains the model exactly as transformers
builds it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

ATTENTION = "hpsearch_cpu"


def dropout_mask(shape: torch.Size, p: float, dtype: torch.dtype) -> torch.Tensor:
    """Bernoulli(1 - p) / (1 - p) of ``shape``, drawn from a generator seeded by torch's."""
    n = shape.numel()
    seed = int(torch.randint(0, 2**62, (1,)).item())
    bits = np.random.SFC64(seed).random_raw((n + 1) // 2).view(np.uint32)[:n]
    drop_below = np.uint32(min(round(p * 2**32), 2**32 - 1))
    mask = torch.from_numpy((bits >= drop_below) * np.float32(1 / (1 - p)))
    return mask.view(shape).to(dtype)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        mask = dropout_mask(x.shape, p, x.dtype)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def masked_dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p == 0:
        return x
    if p >= 1:
        return x * 0
    return _Dropout.apply(x, p)


class Dropout(nn.Dropout):
    """``nn.Dropout`` with masks from :func:`dropout_mask`; same ``p``, same state dict."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return masked_dropout(x, self.p, self.training)


def attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
              attention_mask: torch.Tensor | None, scaling: float | None = None,
              dropout: float = 0.0, **kwargs):
    """Scaled dot-product attention over (batch, heads, length, head size) tensors.

    The signature of transformers' attention functions; ``attention_mask`` is the additive
    (0 / -inf) mask transformers builds for eager attention, or a boolean one (True: attend).
    """
    b, h, q_len, d = query.shape
    k_len = key.shape[2]
    scaling = d**-0.5 if scaling is None else scaling
    q = query.reshape(b * h, q_len, d)
    kt = key.reshape(b * h, k_len, d).transpose(1, 2)
    if attention_mask is None:
        scores = torch.bmm(q, kt).mul_(scaling)
    else:
        if attention_mask.dtype == torch.bool:  # True: attend (SDPA's convention)
            attention_mask = torch.zeros(attention_mask.shape, dtype=q.dtype).masked_fill(
                ~attention_mask, torch.finfo(q.dtype).min)
        bias = attention_mask.expand(b, h, q_len, k_len).reshape(b * h, q_len, k_len)
        scores = torch.baddbmm(bias.to(q.dtype), q, kt, alpha=scaling)
    probs = masked_dropout(scores.softmax(-1), dropout, module.training)
    out = torch.bmm(probs.to(value.dtype), value.reshape(b * h, k_len, d))
    return out.view(b, h, q_len, d).transpose(1, 2).contiguous(), None


def use_cpu_kernels(model: nn.Module) -> str:
    """Swap the model's dropouts and attention for the ones above; say what was swapped.

    A model whose attention transformers cannot redirect (an architecture with its own
    attention code) keeps it; its ``nn.Dropout`` modules are swapped all the same.
    """
    done = []
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask

        AttentionInterface.register(ATTENTION, attention)
        AttentionMaskInterface.register(ATTENTION, eager_mask)
        model.set_attn_implementation(ATTENTION)
        done.append("attention")
    except Exception as e:  # whatever the cause, the model keeps its own attention
        done.append(f"own attention ({type(e).__name__})")
    n = 0
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, Dropout(child.p, child.inplace))
                n += 1
    done.append(f"{n} dropouts")
    return ", ".join(done)

"""AdamW as BERT fine-tuning uses it, and the learning rate at every step."""

from __future__ import annotations

import math
from typing import Any

import torch

from hpsearch.config import TrainerConfig


def lr_at(step: int, cfg: TrainerConfig, total: int, warmup: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based): warm up, then decay or hold."""
    if step < warmup:
        return cfg.learning_rate * (step + 1) / (warmup + 1)
    if cfg.schedule == "constant":
        return cfg.learning_rate
    progress = (step - warmup) / max(1, total - warmup)
    if cfg.schedule == "cosine":
        return cfg.learning_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
    return cfg.learning_rate * max(0.0, 1.0 - progress)


def total_steps(cfg: TrainerConfig, epoch_lengths: list[int]) -> int:
    """Optimizer steps of the whole trial: every epoch's batches, cut at ``max_steps``. The
    schedule decays to zero there, so a solo run and a fused member must count alike. A batch
    is one update however many micro-batches gradient accumulation splits it into."""
    total = sum(epoch_lengths)
    return min(total, cfg.max_steps) if cfg.max_steps else total


def warmup_steps(cfg: TrainerConfig, total: int) -> int:
    return math.ceil(cfg.warmup_ratio * total)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No decay on biases and LayerNorm weights: decaying them only hurts (BERT's recipe)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: torch.nn.Module, cfg: TrainerConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.learning_rate,
        betas=(cfg.adam_beta1, cfg.adam_beta2),
        eps=cfg.adam_epsilon,
        fused=True,  # one kernel per group on CUDA, a vectorised loop on CPU; same maths
    )

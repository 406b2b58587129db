"""Where and how precisely a trial computes, and where it writes what it did."""

from __future__ import annotations

import logging
import random
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from hpsearch.trainer.trial_dir import LOG


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # every CUDA device too


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, amp: torch.dtype | None):
    if amp is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp)


def trial_logger(out_dir: Path) -> tuple[logging.Logger, logging.Handler]:
    """train.log of one trial folder; a logger per folder, so trials in one process keep apart."""
    logger = logging.getLogger(f"hpsearch.trial.{out_dir.resolve()}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    handler = logging.FileHandler(out_dir / LOG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    logger.addHandler(handler)
    return logger, handler

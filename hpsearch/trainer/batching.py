"""Batches by token budget with length bucketing, reproducible from (seed, epoch) alone.

Padding is wasted compute: NER sentences range from 3 to 500 tokens, so fixed-size batches of
random sentences are mostly padding. Windows are shuffled, grouped into pools, sorted by length
inside a pool and cut into batches that fit ``max_tokens`` (padded length x batch size). The
order depends only on (seed, epoch), which is what lets a resumed trial find the exact batch it
stopped at without storing the order.
"""

from __future__ import annotations

import numpy as np
import torch

from hpsearch.trainer.features import IGNORE, Encoded

PAD_MULTIPLE = 8


def padded(n: int, multiple: int = PAD_MULTIPLE) -> int:
    return -(-n // multiple) * multiple


def make_batches(
    lengths: np.ndarray,
    *,
    max_tokens: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    pool_size: int = 4096,
) -> list[np.ndarray]:
    """Index arrays, one per batch. ``batch_size`` fixes sentences per batch; else a budget."""
    n = len(lengths)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
    else:
        order = np.arange(n)
    batches: list[np.ndarray] = []
    for start in range(0, n, pool_size if shuffle else max(n, 1)):
        pool = order[start : start + pool_size] if shuffle else order
        pool = pool[np.argsort(lengths[pool], kind="stable")]
        if batch_size is not None:
            batches += [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
            continue
        cur: list[int] = []
        longest = 0
        for idx in pool:
            ln = padded(int(lengths[idx]))
            if cur and max(longest, ln) * (len(cur) + 1) > max_tokens:
                batches.append(np.asarray(cur))
                cur, longest = [], 0
            cur.append(int(idx))
            longest = max(longest, ln)
        if cur:
            batches.append(np.asarray(cur))
    if shuffle:
        perm = np.random.default_rng([seed, epoch, 1]).permutation(len(batches))
        batches = [batches[i] for i in perm]
    return batches


def collate(enc: Encoded, idx: np.ndarray, pad_id: int) -> dict[str, torch.Tensor]:
    width = padded(int(enc.lengths[idx].max()))
    ids = np.full((len(idx), width), pad_id, dtype=np.int64)
    labels = np.full((len(idx), width), IGNORE, dtype=np.int64)
    mask = np.zeros((len(idx), width), dtype=np.int64)
    for row, w in enumerate(idx):
        i, lab = enc.window(int(w))
        ids[row, : len(i)] = i
        labels[row, : len(i)] = lab
        mask[row, : len(i)] = 1
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
    }

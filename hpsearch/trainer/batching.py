"""Batches by token budget with length bucketing, reproducible from (seed, epoch) alone.

Padding is wasted compute: NER sentences range from 3 to 500 tokens, so fixed-size batches of
random sentences are mostly padding. Windows are shuffled, grouped into pools, sorted by length
inside a pool and cut into batches that fit ``max_tokens`` (padded length x batch size). The
order depends only on (seed, epoch), which is what lets a resumed trial find the exact batch it
stopped at without storing the order.

With gradient accumulation, each batch is split into micro-batches (``micro_batches``) after it
is cut: the budget stays the budget of one optimizer update. A trial on several devices splits
each batch across them the same way (one share a rank), so the budget is the global batch's.

The fast GPU path wants few distinct shapes instead (one CUDA graph per shape): it passes
``widths``, the bucket widths windows are padded to, and ``collate`` pads the rows of a short
batch too, so every batch of a bucket has the same shape.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from hpsearch.trainer.features import IGNORE, Encoded

PAD_MULTIPLE = 8  # tensor cores want multiples of 8; a CPU gains nothing from them


def padded(n: int, multiple: int = PAD_MULTIPLE) -> int:
    return -(-n // multiple) * multiple


def bucket_widths(buckets: Sequence[int], max_length: int) -> tuple[int, ...]:
    """The widths a window can be padded to: the buckets below the window length, then it."""
    top = padded(max_length)
    return tuple(sorted({padded(b) for b in buckets if padded(b) < top} | {top}))


def bucket_of(n: int, widths: Sequence[int]) -> int:
    for w in widths:
        if n <= w:
            return w
    raise ValueError(f"a window of {n} tokens is wider than the widest bucket {widths[-1]}")


def rows_for(width: int, *, max_tokens: int | None, batch_size: int | None) -> int:
    """Rows of every batch padded to ``width``: fixed, or as many as the token budget holds."""
    return batch_size if batch_size is not None else max(1, max_tokens // width)


def make_batches(
    lengths: np.ndarray,
    *,
    max_tokens: int | None = None,
    batch_size: int | None = None,
    seed: int = 0,
    epoch: int = 0,
    shuffle: bool = True,
    pool_size: int = 4096,
    widths: Sequence[int] | None = None,
) -> list[np.ndarray]:
    """Index arrays, one per batch. ``batch_size`` fixes sentences per batch; else a budget.

    With ``widths``, a window costs its bucket's width in the budget, so the rows of a batch
    never exceed ``rows_for`` its bucket and the batch pads to a fixed shape.
    """
    n = len(lengths)
    if shuffle:
        rng = np.random.default_rng([seed, epoch])
        order = rng.permutation(n)
    else:
        order = np.arange(n)
    width_of = (lambda m: bucket_of(m, widths)) if widths else padded
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
            ln = width_of(int(lengths[idx]))
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


def micro_batches(idx: np.ndarray, parts: int) -> list[np.ndarray]:
    """One batch as the ``parts`` micro-batches of gradient accumulation: consecutive runs of
    its windows, as even as the rows allow (fewer parts than ``parts`` for fewer rows, never an
    empty one). A batch is cut from a length-sorted pool, so each part pads little.

    The batches themselves are cut for the whole budget (``max_tokens`` or ``batch_size`` of one
    optimizer update) whatever ``parts`` is: accumulation changes how an update is computed,
    not which sentences it sees.
    """
    if parts <= 1 or len(idx) <= 1:
        return [idx]
    return np.array_split(idx, min(parts, len(idx)))


def labelled_counts(enc: Encoded) -> np.ndarray:
    """Labelled tokens of each window: what a share of a batch's loss is weighted by, known
    to every rank for the whole batch without collating the other ranks' shares."""
    flags = (enc.labels != IGNORE).astype(np.int64)
    sums = np.concatenate([[0], np.cumsum(flags)])
    return sums[enc.offsets[1:]] - sums[enc.offsets[:-1]]


def collate(
    enc: Encoded,
    idx: np.ndarray,
    pad_id: int,
    *,
    multiple: int = PAD_MULTIPLE,
    width: int | None = None,
    rows: int | None = None,
) -> dict[str, torch.Tensor]:
    """Padded tensors for windows ``idx``; ``width``/``rows`` force a shape (the fast path).

    Filler rows attend to one pad token and carry no label: they add nothing to the loss (a
    mean over labelled tokens) and, BERT rows being independent, nothing to the gradients. A
    row attending to nothing would give NaN attention, hence the one token.
    """
    lengths = enc.lengths[idx]
    width = width or padded(int(lengths.max()), multiple)
    n_rows = max(rows or 0, len(idx))
    ids = np.full((n_rows, width), pad_id, dtype=np.int64)
    labels = np.full((n_rows, width), IGNORE, dtype=np.int64)
    mask = np.zeros((n_rows, width), dtype=np.int64)
    for row, w in enumerate(idx):
        a, b = enc.offsets[w], enc.offsets[w + 1]
        ids[row, : b - a] = enc.ids[a:b]
        labels[row, : b - a] = enc.labels[a:b]
        mask[row, : b - a] = 1
    mask[len(idx) :, 0] = 1
    return {
        "input_ids": torch.from_numpy(ids),
        "attention_mask": torch.from_numpy(mask),
        "labels": torch.from_numpy(labels),
    }

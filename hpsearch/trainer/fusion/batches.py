"""K members' batches of any shapes as one batch that changes nothing they compute."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from hpsearch.trainer.features import IGNORE


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

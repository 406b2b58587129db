"""Validation scores of a model: entity-level F1 on every word of every sentence."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hpsearch.trainer.batching import collate, make_batches
from hpsearch.trainer.features import IGNORE, Encoded, words_of_windows
from hpsearch.trainer.metrics import ner_scores
from hpsearch.trainer.runtime import autocast


@dataclass
class EvalSettings:
    """Where and how batches are scored."""

    device: torch.device
    amp: torch.dtype | None
    pad_id: int
    max_tokens: int
    multiple: int = 8
    mode: str = "default"  # seqeval's scoring: "strict" for strict IOB2


def evaluate(model: torch.nn.Module, enc: Encoded, gold: list[list[str]], labels: list[str],
             **settings: Any) -> dict[str, Any]:
    """Scores of one model on every word of every sentence (``settings``: EvalSettings')."""
    was_training = model.training
    model.eval()
    try:
        def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return model(input_ids=ids, attention_mask=mask).logits[None]

        return evaluate_members(forward, [0], enc, gold, labels, EvalSettings(**settings))[0]
    finally:
        model.train(was_training)


@torch.no_grad()
def evaluate_members(
    forward: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    members: Sequence[int],
    enc: Encoded,
    gold: list[list[str]],
    labels: list[str],
    how: EvalSettings,
) -> list[dict[str, Any]]:
    """Scores of each of ``members`` of a model whose ``forward`` gives ``[K, B, T, C]``.

    Long sentences were cut into overlapping windows for the model; seqeval must see each
    sentence whole, as the data set has it, or entities cut at a window edge would count twice.
    A fused array scores all its members on one pass over the data.
    """
    preds = {k: [np.empty(0, dtype=np.int64)] * len(enc) for k in members}
    loss_sum = dict.fromkeys(members, 0.0)
    n_tok = 0
    for idx in make_batches(enc.lengths, max_tokens=how.max_tokens, shuffle=False):
        batch = collate(enc, idx, how.pad_id, multiple=how.multiple)
        b = {k: v.to(how.device, non_blocking=True) for k, v in batch.items()}
        with autocast(how.device, how.amp):
            logits = forward(b["input_ids"], b["attention_mask"])
        n_tok += int((b["labels"] != IGNORE).sum())
        for k in members:
            member = logits[k].float()
            loss_sum[k] += F.cross_entropy(
                member.reshape(-1, member.shape[-1]), b["labels"].view(-1),
                ignore_index=IGNORE, reduction="sum",
            ).item()
            arg = member.argmax(-1).cpu().numpy()
            for row, w in enumerate(idx):
                preds[k][w] = arg[row, : enc.lengths[w]]
    out = []
    for k in members:
        pred_tags = [[labels[i] for i in sent] for sent in words_of_windows(enc, preds[k])]
        scores = ner_scores(gold, pred_tags, how.mode)
        scores["loss"] = loss_sum[k] / max(1, n_tok)
        out.append(scores)
    return out

"""Validation scores of a model: entity-level F1 on every word of every sentence.

A trial on several devices scores it sharded: each rank runs every N-th batch, rank 0 gathers
the predictions and per-batch losses and scores them as one process would have, in the same
order, so F1 and loss do not depend on how many devices ran the evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from hpsearch.trainer.batching import collate, make_batches
from hpsearch.trainer.features import IGNORE, Encoded, words_of_windows
from hpsearch.trainer.metrics import ner_scores
from hpsearch.trainer.runtime import autocast


class Shard(Protocol):
    """This rank among ``world`` (distributed.Group); ``gather`` brings objects to rank 0."""

    rank: int
    world: int

    def gather(self, obj: Any) -> list[Any] | None: ...


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
             *, shard: Shard | None = None, **settings: Any) -> dict[str, Any] | None:
    """Scores of one model on every word of every sentence (``settings``: EvalSettings').

    ``shard``: this process is one rank of several; rank 0 gets the scores, the others None.
    """
    was_training = model.training
    model.eval()
    try:
        def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return model(input_ids=ids, attention_mask=mask).logits[None]

        out = evaluate_members(forward, [0], enc, gold, labels, EvalSettings(**settings), shard)
        return None if out is None else out[0]
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
    shard: Shard | None = None,
) -> list[dict[str, Any]] | None:
    """Scores of each of ``members`` of a model whose ``forward`` gives ``[K, B, T, C]``.

    Long sentences were cut into overlapping windows for the model; seqeval must see each
    sentence whole, as the data set has it, or entities cut at a window edge would count twice.
    A fused array scores all its members on one pass over the data. ``shard``: this rank's
    share of the batches; rank 0 scores everyone's predictions, the other ranks get None.
    """
    preds = {k: [np.empty(0, dtype=np.int64)] * len(enc) for k in members}
    losses: dict[int, list[tuple[int, float]]] = {k: [] for k in members}  # (batch, sum)
    n_tok = 0
    batches = make_batches(enc.lengths, max_tokens=how.max_tokens, shuffle=False)
    mine = range(len(batches)) if shard is None else range(shard.rank, len(batches), shard.world)
    for i in mine:
        idx = batches[i]
        batch = collate(enc, idx, how.pad_id, multiple=how.multiple)
        b = {k: v.to(how.device, non_blocking=True) for k, v in batch.items()}
        with autocast(how.device, how.amp):
            logits = forward(b["input_ids"], b["attention_mask"])
        n_tok += int((b["labels"] != IGNORE).sum())
        for k in members:
            member = logits[k].float()
            losses[k].append((i, F.cross_entropy(
                member.reshape(-1, member.shape[-1]), b["labels"].view(-1),
                ignore_index=IGNORE, reduction="sum",
            ).item()))
            arg = member.argmax(-1).cpu().numpy()
            for row, w in enumerate(idx):
                preds[k][w] = arg[row, : enc.lengths[w]]
    if shard is not None:
        scored = {w for i in mine for w in batches[i]}
        parts = shard.gather(({k: {w: preds[k][w] for w in scored} for k in members},
                              losses, n_tok))
        if parts is None:
            return None
        n_tok, losses = 0, {k: [] for k in members}
        for their_preds, their_losses, their_tok in parts:  # rank 0's own among them
            n_tok += their_tok
            for k in members:
                for w, arr in their_preds[k].items():
                    preds[k][w] = arr
                losses[k] += their_losses[k]
    # Summed in batch order, as one process adds them: the loss does not depend on the shards.
    loss_sum = {k: sum(v for _, v in sorted(losses[k])) for k in members}
    out = []
    for k in members:
        pred_tags = [[labels[i] for i in sent] for sent in words_of_windows(enc, preds[k])]
        scores = ner_scores(gold, pred_tags, how.mode)
        scores["loss"] = loss_sum[k] / max(1, n_tok)
        out.append(scores)
    return out

"""Validation scores of a model: entity-level F1 on every word of every sentence."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hpsearch.trainer.batching import collate, make_batches
from hpsearch.trainer.features import IGNORE, Encoded, words_of_windows
from hpsearch.trainer.metrics import ner_scores
from hpsearch.trainer.runtime import autocast


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    enc: Encoded,
    gold: list[list[str]],
    labels: list[str],
    *,
    device: torch.device,
    amp: torch.dtype | None,
    pad_id: int,
    max_tokens: int,
    multiple: int = 8,
) -> dict[str, Any]:
    """Scores on every word of every sentence, windows joined back together.

    Long sentences were cut into overlapping windows for the model; seqeval must see each
    sentence whole, as the data set has it, or entities cut at a window edge would count twice.
    """
    was_training = model.training
    model.eval()
    preds: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(enc)
    loss_sum, n_tok = 0.0, 0
    for idx in make_batches(enc.lengths, max_tokens=max_tokens, shuffle=False):
        batch = collate(enc, idx, pad_id, multiple=multiple)
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast(device, amp):
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        logits = logits.float()
        loss_sum += F.cross_entropy(
            logits.view(-1, logits.shape[-1]), b["labels"].view(-1),
            ignore_index=IGNORE, reduction="sum",
        ).item()
        n_tok += int((b["labels"] != IGNORE).sum())
        arg = logits.argmax(-1).cpu().numpy()
        for row, w in enumerate(idx):
            preds[w] = arg[row, : enc.lengths[w]]
    model.train(was_training)
    pred_tags = [[labels[i] for i in sent] for sent in words_of_windows(enc, preds)]
    scores = ner_scores(gold, pred_tags)
    scores["loss"] = loss_sum / max(1, n_tok)
    return scores

"""Scoring an exported model folder on a split, with nothing but transformers to load it."""

from __future__ import annotations

from pathlib import Path

from hpsearch.config import StudyConfig
from hpsearch.errors import ConfigError


def evaluate_folder(cfg: StudyConfig, folder: Path, split: str = "test",
                    mode: str | None = None) -> dict:
    """Seqeval scores of ``folder`` (an HF token-classification folder) on ``split``;
    ``mode`` "strict" scores strict IOB2 (default: the study's ``seqeval_mode``)."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    from hpsearch.opening import data_dir
    from hpsearch.trainer.data import read_data
    from hpsearch.trainer.evaluation import evaluate
    from hpsearch.trainer.features import encode
    from hpsearch.trainer.runtime import resolve_device, resolve_precision

    if not (folder / "config.json").exists():
        raise ConfigError(f"{folder}: no exported model here (run the study first)")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar for loading one small shard is noise
    model = AutoModelForTokenClassification.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    data = read_data(data_dir(cfg), cfg.trainer.data_format, splits=(split,),
                     columns=(cfg.trainer.hf_tokens_column, cfg.trainer.hf_tags_column))
    part = data.splits[split]
    if split == "val":  # the study's validation set, as its trials saw it
        part = part.limit(cfg.trainer.val_limit)
    unknown = {t for seq in part.tags for t in seq} - set(labels)
    if unknown:
        raise ConfigError(f"{folder}: model has no label for {sorted(unknown)}")
    label2id = {lab: i for i, lab in enumerate(labels)}
    enc = encode(part.sentences, part.tags, tok, label2id, cfg.trainer.max_length)
    device = resolve_device(cfg.trainer.device)
    model.to(device)
    with torch.inference_mode():
        return evaluate(model, enc, part.tags, labels, device=device,
                        amp=resolve_precision(cfg.trainer.precision, device),
                        pad_id=tok.pad_token_id or 0, max_tokens=cfg.trainer.eval_batch_tokens,
                        mode=mode or cfg.trainer.seqeval_mode)

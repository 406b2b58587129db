"""Data work done once per study, not once per trial.

Reading, validating and tokenising a corpus is the same for every trial of a study (the
searched parameters do not touch it), so it is memoised in the process and cached on disk
under the study's ``cache/`` folder; trial 2..N start training almost at once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from hpsearch.config import TrainerConfig
from hpsearch.trainer.data import read_data
from hpsearch.trainer.features import Encoded, cache_key, encode_cached
from hpsearch.trainer.modeling import load_tokenizer, resolve_source, train_wordpiece


@dataclass
class Prepared:
    labels: list[str]
    tokenizer: object
    train: Encoded
    val: Encoded
    val_gold: list[list[str]]
    seconds: float
    source: str  # "memory", "disk cache" or "built": how the data got here, for the log

    @property
    def label2id(self) -> dict[str, int]:
        return {lab: i for i, lab in enumerate(self.labels)}


_MEMO: dict[tuple, Prepared] = {}


def _memo_key(cfg: TrainerConfig, data_dir: Path, eval_split: str) -> tuple:
    return (
        str(data_dir.resolve()), cfg.data_format, cfg.train_limit, cfg.val_limit, cfg.model,
        cfg.scratch.model_dump_json() if cfg.model == "scratch" else "", cfg.max_length,
        eval_split,
    )


def prepare(
    cfg: TrainerConfig, data_dir: Path, cache_dir: Path | None, eval_split: str = "val"
) -> Prepared:
    """Tokenizer plus encoded train and evaluation splits, from memory, disk or scratch."""
    key = _memo_key(cfg, data_dir, eval_split)
    t0 = time.perf_counter()
    if key in _MEMO:
        hit = _MEMO[key]
        return Prepared(hit.labels, hit.tokenizer, hit.train, hit.val, hit.val_gold,
                        time.perf_counter() - t0, "memory")
    data = read_data(data_dir, cfg.data_format, splits=("train", eval_split))
    train = data.splits["train"].limit(cfg.train_limit)
    val = data.splits[eval_split].limit(cfg.val_limit)
    if cfg.model == "scratch":
        tok = train_wordpiece(train.sentences, cfg.scratch, cache_dir or data_dir / ".cache")
    else:
        tok = load_tokenizer(resolve_source(cfg.model))
    label2id = {lab: i for i, lab in enumerate(data.labels)}
    data_hash = data.fingerprint()
    hits = []
    encoded = []
    for name, split, limit in (("train", train, cfg.train_limit), (eval_split, val, cfg.val_limit)):
        k = cache_key(data_hash, tok, cfg.max_length, data.labels, f"{name}:{limit}")
        enc, hit = encode_cached(cache_dir, k, split.sentences, split.tags, tok, label2id,
                                 cfg.max_length)
        encoded.append(enc)
        hits.append(hit)
    prep = Prepared(data.labels, tok, encoded[0], encoded[1], val.tags,
                    time.perf_counter() - t0, "disk cache" if all(hits) else "built")
    _MEMO[key] = prep
    return prep

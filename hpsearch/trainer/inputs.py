"""Data work done once per study, not once per trial.

Reading, validating and tokenising a corpus is the same for every trial of a study (the
searched parameters do not touch it), so it is memoised in the process and cached on disk
under the study's ``cache/`` folder; trial 2..N start training almost at once.

A process that finds the disk cache does not even parse the data files (parsing MSRA alone
takes about a second): a small manifest, keyed by the files' bytes and the settings that shape
the features, names the encoded splits, the labels and the tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from hpsearch.config import TrainerConfig
from hpsearch.trainer.data import _find_conll, detect_format, read_data
from hpsearch.trainer.features import Encoded, cache_key, encode_cached, gold_of_windows
from hpsearch.trainer.hf_data import hf_source_files
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
    pid: int = field(default_factory=os.getpid)
    used: bool = False  # a trial trained on it already: the next one paid nothing for it

    def cost(self) -> tuple[float, str]:
        """(seconds, how) of data work to put on the books of the trial about to use this.

        Only the first trial of the process that prepared it pays: a trial in a forked
        process got it from its parent, a later trial found it in memory.
        """
        if self.pid != os.getpid():
            return 0.0, "from the parent process"
        if self.used:
            return 0.0, "memory"
        self.used = True
        return self.seconds, self.source


_MEMO: dict[tuple, Prepared] = {}


def _memo_key(cfg: TrainerConfig, data_dir: Path, eval_split: str) -> tuple:
    return (
        str(data_dir.resolve()), cfg.data_format, cfg.train_limit, cfg.val_limit, cfg.model,
        cfg.scratch.model_dump_json() if cfg.model == "scratch" else "", cfg.max_length,
        eval_split, *_columns(cfg),
    )


def _columns(cfg: TrainerConfig) -> tuple[str, str]:
    return cfg.hf_tokens_column, cfg.hf_tags_column


def prepare(
    cfg: TrainerConfig, data_dir: Path, cache_dir: Path | None, eval_split: str = "val"
) -> Prepared:
    """Tokenizer plus encoded train and evaluation splits, from memory, disk or scratch."""
    # The files' sizes and times too: a notebook or a long-lived process that edits the data
    # between two runs must not be handed the first run's sentences from memory.
    key = (*_memo_key(cfg, data_dir, eval_split), _stamp(cfg, data_dir, eval_split))
    t0 = time.perf_counter()
    if key in _MEMO:
        hit = _MEMO[key]
        return Prepared(hit.labels, hit.tokenizer, hit.train, hit.val, hit.val_gold,
                        time.perf_counter() - t0, "memory")
    manifest = _manifest_path(cfg, data_dir, cache_dir, eval_split)
    fast = _from_manifest(cfg, manifest)
    if fast is not None:
        prep = Prepared(*fast, time.perf_counter() - t0, "disk cache")
        _MEMO[key] = prep
        return prep
    data = read_data(data_dir, cfg.data_format, splits=("train", eval_split),
                     columns=_columns(cfg))
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
    keys = []
    for name, split, limit in (("train", train, cfg.train_limit), (eval_split, val, cfg.val_limit)):
        k = cache_key(data_hash, tok, cfg.max_length, data.labels, f"{name}:{limit}")
        enc, hit = encode_cached(cache_dir, k, split.sentences, split.tags, tok, label2id,
                                 cfg.max_length)
        encoded.append(enc)
        hits.append(hit)
        keys.append(k)
    if manifest is not None:
        _write_json(manifest, {
            "labels": data.labels, "features": keys,
            # A scratch tokenizer lives next to the manifest, in the cache folder.
            "tokenizer": Path(tok.name_or_path).name if cfg.model == "scratch" else None,
        })
    prep = Prepared(data.labels, tok, encoded[0], encoded[1], val.tags,
                    time.perf_counter() - t0, "disk cache" if all(hits) else "built")
    _MEMO[key] = prep
    return prep


def _stamp(cfg: TrainerConfig, data_dir: Path, eval_split: str) -> tuple | None:
    try:
        return tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(
            data_files(data_dir, cfg.data_format, ("train", eval_split))))
    except (OSError, ValueError):
        return None


def data_files(data_dir: Path, fmt: str, splits: tuple[str, ...]) -> list[Path]:
    """The files ``read_data`` would read, found without parsing them."""
    fmt = detect_format(data_dir) if fmt == "auto" else fmt
    if fmt == "hf":
        return hf_source_files(str(data_dir), splits)
    files: list[Path] = []
    for split in splits:
        if fmt == "bert-ner":
            files += [data_dir / split / "sentences.txt", data_dir / split / "tags.txt"]
        else:
            files.append(_find_conll(data_dir, split))
    if (data_dir / "tags.txt").exists():
        files.append(data_dir / "tags.txt")
    return files


def _manifest_path(cfg: TrainerConfig, data_dir: Path, cache_dir: Path | None,
                   eval_split: str) -> Path | None:
    if cache_dir is None:
        return None
    settings = ("manifest-1",) + _memo_key(cfg, data_dir, eval_split)[1:]  # not the path
    h = hashlib.sha256(repr(settings).encode())
    try:
        for f in sorted(data_files(data_dir, cfg.data_format, ("train", eval_split))):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    except (OSError, ValueError):
        return None  # the slow path reports what is wrong with the data
    return cache_dir / f"prepared-{h.hexdigest()[:20]}.json"


def _from_manifest(cfg: TrainerConfig, manifest: Path | None):
    """(labels, tokenizer, train, val, val_gold) from the disk cache, or None on any doubt."""
    if manifest is None or not manifest.exists():
        return None
    try:
        m = json.loads(manifest.read_text())
        train, val = (Encoded.load(manifest.parent / f"features-{k}.npz") for k in m["features"])
        if cfg.model == "scratch":
            tok = load_tokenizer(str(manifest.parent / m["tokenizer"]))
        else:
            tok = load_tokenizer(resolve_source(cfg.model))
        labels = m["labels"]
        gold = [[labels[i] for i in sent] for sent in gold_of_windows(val)]
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return labels, tok, train, val, gold


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    tmp.write_text(json.dumps(obj))
    os.replace(tmp, path)

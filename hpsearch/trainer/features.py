"""Sentences to model inputs: word alignment, windows for long sentences, an on-disk cache.

Tokenising MSRA takes seconds; a study runs it once. The result is cached as a plain ``.npz``
(loaded with ``allow_pickle=False``, so a planted file cannot run code) keyed by the data's
content hash, the tokenizer and the window length.

A sentence longer than the model's window is cut into consecutive windows at word boundaries
rather than truncated, so every gold word gets a prediction and the score counts every entity.
The first sub-token of a word carries its label; the other sub-tokens are ignored (-100).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IGNORE = -100
_CACHE_VERSION = "1"


@dataclass
class Encoded:
    """Windows of token ids, flat for compact storage; window ``w`` is ``ids[off[w]:off[w+1]]``."""

    ids: np.ndarray  # int32, all windows concatenated, special tokens included
    labels: np.ndarray  # int64, IGNORE where no label is predicted
    offsets: np.ndarray  # int64, n_windows + 1
    sentence: np.ndarray  # int64, the sentence each window comes from
    n_sentences: int

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def window(self, w: int) -> tuple[np.ndarray, np.ndarray]:
        a, b = self.offsets[w], self.offsets[w + 1]
        return self.ids[a:b], self.labels[a:b]

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(
                f,
                ids=self.ids,
                labels=self.labels,
                offsets=self.offsets,
                sentence=self.sentence,
                n_sentences=np.array([self.n_sentences]),
            )
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Encoded:
        with np.load(path, allow_pickle=False) as z:
            return cls(
                ids=z["ids"],
                labels=z["labels"],
                offsets=z["offsets"],
                sentence=z["sentence"],
                n_sentences=int(z["n_sentences"][0]),
            )


def special_tokens(tokenizer) -> tuple[list[int], list[int]]:
    """The ids a model expects around a sequence ([CLS] .. [SEP] for BERT, <s> .. </s> ...)."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return full[:i], full[i + len(plain) :]
    return [], []


def encode(
    sentences: list[list[str]],
    tags: list[list[str]],
    tokenizer,
    label2id: dict[str, int],
    max_length: int,
) -> Encoded:
    prefix, suffix = special_tokens(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ValueError(f"max_length {max_length} leaves no room for tokens")
    unk = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else 0
    enc = tokenizer(sentences, is_split_into_words=True, add_special_tokens=False)

    ids: list[int] = []
    labels: list[int] = []
    offsets = [0]
    sentence: list[int] = []
    for s, (words, seq) in enumerate(zip(sentences, tags)):
        pieces: list[list[int]] = [[] for _ in words]
        for tok, wid in zip(enc["input_ids"][s], enc.word_ids(s)):
            if wid is not None:
                pieces[wid].append(tok)
        win_ids: list[int] = []
        win_labels: list[int] = []
        for w, toks in enumerate(pieces):
            # A word the tokenizer drops entirely (control characters) still needs a prediction.
            toks = (toks or [unk])[:budget]
            if len(win_ids) + len(toks) > budget:
                _close(ids, labels, offsets, sentence, s, prefix, suffix, win_ids, win_labels)
                win_ids, win_labels = [], []
            win_ids += toks
            win_labels += [label2id[seq[w]]] + [IGNORE] * (len(toks) - 1)
        _close(ids, labels, offsets, sentence, s, prefix, suffix, win_ids, win_labels)
    return Encoded(
        ids=np.asarray(ids, dtype=np.int32),
        labels=np.asarray(labels, dtype=np.int64),
        offsets=np.asarray(offsets, dtype=np.int64),
        sentence=np.asarray(sentence, dtype=np.int64),
        n_sentences=len(sentences),
    )


def _close(ids, labels, offsets, sentence, s, prefix, suffix, win_ids, win_labels) -> None:
    if not win_ids:
        return
    ids += prefix + win_ids + suffix
    labels += [IGNORE] * len(prefix) + win_labels + [IGNORE] * len(suffix)
    offsets.append(len(ids))
    sentence.append(s)


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else repr(tokenizer.get_vocab())
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cache_key(data_hash: str, tokenizer, max_length: int, labels: list[str], extra: str) -> str:
    h = hashlib.sha256()
    for part in (_CACHE_VERSION, data_hash, tokenizer_fingerprint(tokenizer), str(max_length),
                 "|".join(labels), extra):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def encode_cached(
    cache_dir: Path | None,
    key: str,
    sentences: list[list[str]],
    tags: list[list[str]],
    tokenizer,
    label2id: dict[str, int],
    max_length: int,
) -> tuple[Encoded, bool]:
    """(encoded, hit): reads the cache when present and sound, else encodes and stores it."""
    path = cache_dir / f"features-{key}.npz" if cache_dir else None
    if path is not None and path.exists():
        try:
            return Encoded.load(path), True
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt, never trusted
    enc = encode(sentences, tags, tokenizer, label2id, max_length)
    if path is not None:
        enc.save(path)
    return enc, False


def words_of_windows(enc: Encoded, preds: list[np.ndarray]) -> list[list[int]]:
    """Per sentence, the predicted label id of every word, joined back across its windows."""
    out: list[list[int]] = [[] for _ in range(enc.n_sentences)]
    for w, p in enumerate(preds):
        _, lab = enc.window(w)
        out[enc.sentence[w]].extend(p[lab != IGNORE].tolist())
    return out


def gold_of_windows(enc: Encoded) -> list[list[int]]:
    out: list[list[int]] = [[] for _ in range(enc.n_sentences)]
    for w in range(len(enc)):
        _, lab = enc.window(w)
        out[enc.sentence[w]].extend(lab[lab != IGNORE].tolist())
    return out

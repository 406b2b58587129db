"""NER data readers: the BERT-NER-pytorch folder layout and CoNLL column files (and, through
``hf_data``, a 🤗 ``datasets`` dataset).

A bad line in a 40,000-sentence file must be findable, so every problem is a :class:`DataError`
naming the file and the line. What can be repaired without guessing is repaired: CRLF line ends
are stripped, BIOES tags are turned into BIO, and an ``I-X`` that opens an entity becomes ``B-X``
(the way conlleval and seqeval read it anyway).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from hpsearch.errors import DataError

_CONLL_NAMES = {
    "train": ("train.txt", "train.conll", "eng.train"),
    "val": ("val.txt", "dev.txt", "valid.txt", "val.conll", "dev.conll", "eng.testa"),
    "test": ("test.txt", "test.conll", "eng.testb"),
}


@dataclass
class Split:
    sentences: list[list[str]]
    tags: list[list[str]]
    files: list[Path] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.sentences)

    def limit(self, n: int | None) -> Split:
        if n is None or n >= len(self):
            return self
        return Split(self.sentences[:n], self.tags[:n], self.files)


@dataclass
class NerData:
    labels: list[str]
    splits: dict[str, Split]
    files: list[Path]

    def fingerprint(self) -> str:
        """A content hash of every file read, so caches follow the data, not its path."""
        return fingerprint_files(self.files)


_CHUNK = 1 << 20


def stream_hash(path: Path, *more) -> str:
    """The file's sha256, read in chunks so a 400 MB file never sits in memory whole; ``more``
    hashers are fed the same bytes (one read serves a data set's overall fingerprint too)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            for m in more:
                m.update(chunk)
    return h.hexdigest()[:16]


def fingerprint_files(files, per_file: dict[Path, str] | None = None) -> str:
    """The content hash of a data set's files (each name and its bytes, in path order): the
    key of its caches and the fingerprint on its trials. ``per_file`` gets each file's own
    hash from the same read."""
    total = hashlib.sha256()
    for f in sorted(files):
        total.update(f.name.encode())
        own = stream_hash(f, total)
        if per_file is not None:
            per_file[f] = own
    return total.hexdigest()[:16]


def detect_format(data_dir: Path) -> str:
    if (data_dir / "train" / "sentences.txt").exists():
        return "bert-ner"
    if any((data_dir / n).exists() for n in _CONLL_NAMES["train"]):
        return "conll"
    if (data_dir / "dataset_dict.json").exists():  # what DatasetDict.save_to_disk writes
        return "hf"
    raise DataError(
        f"{data_dir}: no training data found (expected train/sentences.txt + train/tags.txt, "
        f"a CoNLL file named one of {', '.join(_CONLL_NAMES['train'])}, "
        "or a 🤗 datasets folder with dataset_dict.json)"
    )


def read_lines(path: Path) -> list[str]:
    """UTF-8 lines with CRLF/LF ends removed; a decoding error names its line."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file is missing") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 (byte 0x{raw[e.start]:02x})") from None
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.rstrip("\r") for ln in lines]


def to_bio(tags: list[str], path: Path | str, line: int) -> list[str]:
    """BIOES/IOBES and IOB1 spans to BIO (IOB2); anything else that is not a tag is an error."""
    out: list[str] = []
    prev = "O"
    for t in tags:
        if t == "O":
            out.append(t)
            prev = t
            continue
        prefix, sep, typ = t.partition("-")
        if not sep or not typ or prefix not in ("B", "I", "E", "S"):
            raise DataError(f"{path}:{line}: '{t}' is not a BIO/BIOES tag")
        if prefix in ("B", "S"):
            new = "B-" + typ
        else:  # I or E continues an entity of the same type, or opens one
            new = "I-" + typ if prev in ("B-" + typ, "I-" + typ) else "B-" + typ
        out.append(new)
        prev = new
    return out


def _check_labels(split: Split, labels: set[str], tag_files: list[Path]) -> None:
    for i, seq in enumerate(split.tags):
        for t in seq:
            if t not in labels:
                where = tag_files[0] if tag_files else Path("?")
                raise DataError(f"{where}:{i + 1}: unknown tag '{t}' (not in the tag set)")


def read_bert_ner_split(data_dir: Path, split: str) -> Split:
    s_path = data_dir / split / "sentences.txt"
    t_path = data_dir / split / "tags.txt"
    sents = read_lines(s_path)
    tags = read_lines(t_path)
    if len(sents) != len(tags):
        n = min(len(sents), len(tags)) + 1
        raise DataError(
            f"{t_path}:{n}: {len(tags)} tag lines but {len(sents)} sentence lines in {s_path}"
        )
    out_s: list[list[str]] = []
    out_t: list[list[str]] = []
    for i, (s, t) in enumerate(zip(sents, tags), start=1):
        words, seq = s.split(), t.split()
        if not words:
            raise DataError(f"{s_path}:{i}: empty sentence")
        if len(words) != len(seq):
            raise DataError(f"{t_path}:{i}: {len(seq)} tags for {len(words)} tokens in {s_path}")
        out_s.append(words)
        out_t.append(to_bio(seq, t_path, i))
    return Split(out_s, out_t, [s_path, t_path])


def read_conll_file(path: Path) -> Split:
    """Column files: token first, NER tag last, blank lines between sentences."""
    sents: list[list[str]] = []
    tags: list[list[str]] = []
    words: list[str] = []
    seq: list[str] = []
    start = 1

    def flush(line: int) -> None:
        nonlocal words, seq
        if words:
            sents.append(words)
            tags.append(to_bio(seq, path, line))
        words, seq = [], []

    for i, ln in enumerate(read_lines(path), start=1):
        cols = ln.split()
        if not cols:
            flush(start)
            start = i + 1
            continue
        if cols[0] == "-DOCSTART-":
            continue
        if len(cols) < 2:
            raise DataError(f"{path}:{i}: expected 'token ... tag', found one column")
        words.append(cols[0])
        seq.append(cols[-1])
    flush(start)
    if not sents:
        raise DataError(f"{path}: no sentences found")
    return Split(sents, tags, [path])


def _find_conll(data_dir: Path, split: str) -> Path:
    for name in _CONLL_NAMES[split]:
        if (data_dir / name).exists():
            return data_dir / name
    names = ", ".join(_CONLL_NAMES[split])
    raise DataError(f"{data_dir}: missing {split} split (looked for {names})")


def read_label_file(path: Path) -> list[str]:
    labels = [ln.strip() for ln in read_lines(path) if ln.strip()]
    bio = to_bio_labels(labels, path)
    return bio


def to_bio_labels(labels: list[str], path: Path | str) -> list[str]:
    types: list[str] = []
    for i, t in enumerate(labels, start=1):
        if t == "O":
            continue
        prefix, sep, typ = t.partition("-")
        if not sep or prefix not in ("B", "I", "E", "S"):
            raise DataError(f"{path}:{i}: '{t}' is not a BIO/BIOES tag")
        if typ not in types:
            types.append(typ)
    return label_list(types)


def label_list(types: list[str]) -> list[str]:
    out = ["O"]
    for typ in types:
        out += ["B-" + typ, "I-" + typ]
    return out


def labels_of(splits: dict[str, Split]) -> list[str]:
    """The tag set of data that comes without one: every type seen, in a stable order."""
    types = sorted({t[2:] for s in splits.values() for seq in s.tags for t in seq if t != "O"})
    return label_list(types)


def read_data(
    data_dir: str | Path, fmt: str = "auto", splits: tuple[str, ...] = ("train", "val"), *,
    columns: tuple[str, str] = ("tokens", "ner_tags"),
) -> NerData:
    """``columns``: the token and tag columns of a 🤗 datasets dataset (``fmt`` hf)."""
    source, data_dir = str(data_dir), Path(data_dir)
    if fmt == "auto" and data_dir.is_dir():
        fmt = detect_format(data_dir)
    if fmt == "hf":  # a hub name is no folder: hf_data decides what the name is
        from hpsearch.trainer.hf_data import read_hf

        return read_hf(source, splits, *columns)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: data directory does not exist")
    out: dict[str, Split] = {}
    for split in splits:
        if fmt == "bert-ner":
            if not (data_dir / split).is_dir():
                raise DataError(f"{data_dir / split}: missing {split} split")
            out[split] = read_bert_ner_split(data_dir, split)
        else:
            out[split] = read_conll_file(_find_conll(data_dir, split))
    files = [f for s in out.values() for f in s.files]
    label_file = data_dir / "tags.txt"
    if label_file.exists():
        labels = read_label_file(label_file)
        files.append(label_file)
        for split in out.values():
            _check_labels(split, set(labels), split.files[1:] or split.files)
    else:
        labels = labels_of(out)
    return NerData(labels=labels, splits=out, files=files)

"""NER data as a 🤗 ``datasets`` dataset: a ``save_to_disk`` folder, a local dataset folder, or
a hub name.

A user of the HF ecosystem already has the data in this shape; writing it out as text files
first would be one more step to get wrong. The tags go through the readers' own repairs
(data.py), so a dataset and the same sentences as text files give the same model. Problems are
one :class:`DataError` line that names the split and row (``SOURCE/SPLIT:ROW``, counted from 1)
or the column.

``datasets`` is an optional dependency, imported only here. A hub name is asked of the hub once
with a short timeout before ``load_dataset`` is called, since the hub client retries an
unreachable endpoint for half a minute.
"""

from __future__ import annotations

import json
from pathlib import Path

from hpsearch.errors import DataError
from hpsearch.trainer.data import NerData, Split, labels_of, to_bio, to_bio_labels

#: The dataset's split names each of ours is read from, the first one present.
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "val", "dev"), "test": ("test",)}

_INSTALL = "pip install 'hpsearch[hf]'"
_DOCSTART = ["-DOCSTART-"]
_STRINGS = ("string", "large_string")


def read_hf(source: str, splits: tuple[str, ...], tokens_column: str = "tokens",
            tags_column: str = "ner_tags") -> NerData:
    datasets = _import_datasets()
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # bars for loading a few shards are noise in a study's log
    try:
        loaded = _load(datasets, source)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    if not isinstance(loaded, datasets.DatasetDict):
        raise DataError(f"{source}: one Dataset without splits; save a DatasetDict with "
                        "train and validation splits")
    out: dict[str, Split] = {}
    names: list[str] = []
    for split in splits:
        name = _split_name(source, split, list(loaded))
        out[split], tag_names = _read_split(datasets, loaded[name], f"{source}/{name}",
                                            tokens_column, tags_column)
        names += tag_names or []
    labels = to_bio_labels(names, f"{source} ({tags_column} names)") if names else []
    labels += [t for t in labels_of(out) if t not in labels]  # tags given as strings
    try:
        files = hf_source_files(source, splits)
    except ValueError:  # from the hub: the files are those of the local cache
        files = sorted({Path(f["filename"]) for s in splits
                        for f in loaded[_split_name(source, s, list(loaded))].cache_files})
    return NerData(labels=labels, splits=out, files=files)


def hf_source_files(source: str, splits: tuple[str, ...]) -> list[Path]:
    """The files a dataset on disk is read from, found without loading it, so that caches
    follow its bytes. A save_to_disk folder's ``state.json`` is left out: it holds a random
    fingerprint for data made in memory, which would make equal data look different."""
    root = Path(source)
    if (root / "dataset_dict.json").is_file():
        try:
            names = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
            files = [root / "dataset_dict.json"]
            for split in splits:
                folder = root / _split_name(source, split, names)
                state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
                files += [folder / "dataset_info.json"]
                files += [folder / f["filename"] for f in state["_data_files"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise DataError(f"{source}: not a readable save_to_disk folder ({e})") from None
        return files
    if root.is_dir():  # load_dataset reads some of these; all of them decide the fingerprint
        return sorted(p for p in root.rglob("*") if p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(root).parts))
    raise ValueError(f"{source}: a hub dataset's files are known once it is loaded")


def _import_datasets():
    try:
        import datasets
    except ImportError:
        raise DataError(f"data_format: hf needs the datasets package ({_INSTALL})") from None
    return datasets


def _load(datasets, source: str):
    root = Path(source)
    if root.exists():
        try:
            if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
                return datasets.load_from_disk(source)
            return datasets.load_dataset(source)
        except Exception as e:  # datasets raises many kinds; each is the user's one line
            raise DataError(f"{source}: datasets cannot load it: {_first_line(e)}") from None
    return _load_hub(datasets, source)


def _load_hub(datasets, name: str):
    from huggingface_hub import constants

    from hpsearch.preflight import ask_hub, could_be_hub_name

    if not could_be_hub_name(name):
        raise DataError(f"{name}: data directory does not exist")
    offline = constants.HF_HUB_OFFLINE
    if not offline:
        endpoint, status, reason = ask_hub("datasets", name)
        if status is None:
            raise DataError(
                f"trainer.data_dir: '{name}' is no folder here, and the hub ({endpoint}) cannot "
                f"be reached ({reason}); save it with save_to_disk where the hub is reachable "
                "and point data_dir at the folder, or set HF_HUB_OFFLINE=1 to use a cached copy")
        if status == 404:
            raise DataError(f"trainer.data_dir: no folder '{name}' and no dataset of that name "
                            f"on the hub ({endpoint})")
        if status in (401, 403):
            raise DataError(f"trainer.data_dir: dataset '{name}' on {endpoint} needs a login "
                            "(huggingface-cli login) or access to a gated dataset")
    try:
        return datasets.load_dataset(name)
    except Exception as e:  # datasets raises many kinds; each is the user's one line
        if offline:
            raise DataError(
                f"trainer.data_dir: '{name}' is no folder here and HF_HUB_OFFLINE is set, so "
                f"only the local cache is searched ({_first_line(e)}); save it with "
                "save_to_disk where the hub is reachable and point data_dir at the folder"
            ) from None
        raise DataError(f"trainer.data_dir: hub dataset '{name}': {_first_line(e)}") from None


def _split_name(source: str, split: str, names: list[str]) -> str:
    wanted = SPLIT_NAMES.get(split, (split,))
    for name in wanted:
        if name in names:
            return name
    raise DataError(f"{source}: no {split} split (looked for {', '.join(wanted)}; "
                    f"its splits: {', '.join(names) or 'none'})")


def _read_split(datasets, ds, where: str, tokens_column: str,
                tags_column: str) -> tuple[Split, list[str] | None]:
    """The split's sentences and BIO tags, and its ClassLabel names (None for string tags)."""
    for col, field in ((tokens_column, "hf_tokens_column"), (tags_column, "hf_tags_column")):
        if col not in ds.column_names:
            raise DataError(f"{where}: no column '{col}' (its columns: "
                            f"{', '.join(ds.column_names)}); trainer.{field} names another")
    tok_feature, tag_feature = ds.features[tokens_column], ds.features[tags_column]
    if getattr(getattr(tok_feature, "feature", None), "dtype", None) not in _STRINGS:
        raise DataError(f"{where}: column '{tokens_column}' holds {tok_feature}, "
                        "not lists of words")
    inner = getattr(tag_feature, "feature", None)
    if isinstance(inner, datasets.ClassLabel):
        names = list(inner.names)
    elif getattr(inner, "dtype", None) in _STRINGS:
        names = None
    else:
        raise DataError(f"{where}: column '{tags_column}' holds {tag_feature}, not lists of "
                        "tags (ClassLabel ids or tag strings)")
    rows = ds.select_columns(list(dict.fromkeys([tokens_column, tags_column]))).to_dict()
    sents: list[list[str]] = []
    tags: list[list[str]] = []
    for row, (words, seq) in enumerate(zip(rows[tokens_column], rows[tags_column]), start=1):
        if not words or words == _DOCSTART:  # as a CoNLL file's blank lines and -DOCSTART-
            continue
        if seq is None or len(seq) != len(words):
            raise DataError(f"{where}:{row}: {len(seq or [])} tags for {len(words)} tokens")
        if None in words:
            raise DataError(f"{where}:{row}: column '{tokens_column}' has a null token")
        if names is not None:
            bad = [t for t in seq if t is None or not 0 <= t < len(names)]
            if bad:
                raise DataError(f"{where}:{row}: tag id {bad[0]} is none of the "
                                f"{len(names)} ClassLabel names of '{tags_column}'")
            seq = [names[t] for t in seq]
        elif None in seq:
            raise DataError(f"{where}:{row}: column '{tags_column}' has a null tag")
        sents.append(words)
        tags.append(to_bio(seq, where, row))
    if not sents:
        raise DataError(f"{where}: no sentences")
    return Split(sents, tags), names


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]

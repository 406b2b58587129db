"""``data_format: hf``: a 🤗 datasets dataset trains like the same sentences as text files."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import (
    SHARED_DATA,
    TINY,
    assert_no_hub_fails_fast,
    study_config,
    write_study,
)

datasets = pytest.importorskip("datasets")

from hpsearch.errors import DataError  # noqa: E402
from hpsearch.trainer.data import read_data  # noqa: E402

_HF_SPLITS = {"train": "train", "val": "validation"}


def _lines(path: Path, n: int | None = None) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()[:n]


def bert_ner_slice(src: Path, dst: Path, n: dict[str, int]) -> Path:
    """The first ``n[split]`` sentences of a BERT-NER folder, with its tag set, as a new one."""
    for split, count in n.items():
        (dst / split).mkdir(parents=True)
        for name in ("sentences.txt", "tags.txt"):
            lines = _lines(src / split / name, count)
            (dst / split / name).write_text("".join(x + "\n" for x in lines), encoding="utf-8")
    if (src / "tags.txt").exists():
        (dst / "tags.txt").write_text((src / "tags.txt").read_text(encoding="utf-8"))
    return dst


def save_as_dataset(bert_ner: Path, dst: Path, names: list[str], *, tokens: str = "tokens",
                    tags: str = "ner_tags", class_label: bool = True) -> Path:
    """The same sentences as a DatasetDict written by save_to_disk; tags as ClassLabel ids."""
    tag_feature = datasets.ClassLabel(names=names) if class_label else datasets.Value("string")
    features = datasets.Features({tokens: datasets.Sequence(datasets.Value("string")),
                                  tags: datasets.Sequence(tag_feature)})
    parts = {}
    for split, hf_name in _HF_SPLITS.items():
        words = [s.split() for s in _lines(bert_ner / split / "sentences.txt")]
        seqs = [t.split() for t in _lines(bert_ner / split / "tags.txt")]
        if class_label:
            seqs = [[names.index(t) for t in seq] for seq in seqs]
        parts[hf_name] = datasets.Dataset.from_dict({tokens: words, tags: seqs},
                                                    features=features)
    datasets.DatasetDict(parts).save_to_disk(str(dst))
    return dst


@pytest.fixture
def demo_pair(demo_dir, tmp_path) -> tuple[Path, Path]:
    """A slice of the demo data as BERT-NER files and as a saved dataset."""
    files = bert_ner_slice(demo_dir, tmp_path / "files", {"train": 200, "val": 50})
    names = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    return files, save_as_dataset(files, tmp_path / "hf", names)


def test_a_saved_dataset_reads_as_the_same_sentences_tags_and_labels(demo_pair):
    files, hf = demo_pair
    a, b = read_data(files), read_data(hf, "hf")
    assert read_data(hf).splits["val"].tags == b.splits["val"].tags  # auto finds the folder
    assert a.labels == b.labels
    for split in ("train", "val"):
        assert a.splits[split].sentences == b.splits[split].sentences
        assert a.splits[split].tags == b.splits[split].tags
    assert b.fingerprint() == read_data(hf, "hf").fingerprint()


def test_the_fingerprint_follows_the_content_not_the_save(demo_pair, tmp_path):
    files, hf = demo_pair
    names = ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]
    again = save_as_dataset(files, tmp_path / "again", names)
    assert read_data(again, "hf").fingerprint() == read_data(hf, "hf").fingerprint()
    (files / "train" / "sentences.txt").write_text("Zed\n" + "\n".join(
        _lines(files / "train" / "sentences.txt")[1:]) + "\n")
    (files / "train" / "tags.txt").write_text("O\n" + "\n".join(
        _lines(files / "train" / "tags.txt")[1:]) + "\n")
    other = save_as_dataset(files, tmp_path / "other", names)
    assert read_data(other, "hf").fingerprint() != read_data(hf, "hf").fingerprint()


def test_custom_columns_and_string_tags_are_read_and_repaired(demo_pair, tmp_path):
    files, _ = demo_pair
    hf = save_as_dataset(files, tmp_path / "words", [], tokens="words", tags="labels",
                         class_label=False)
    d = read_data(hf, "hf", columns=("words", "labels"))
    assert d.splits["train"].sentences == read_data(files).splits["train"].sentences
    assert d.labels == ["O", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "B-PER", "I-PER"]

    bioes = datasets.DatasetDict({
        split: datasets.Dataset.from_dict({"tokens": [["New", "York", "now"], ["Ann"]],
                                           "ner_tags": [["I-LOC", "E-LOC", "O"], ["S-PER"]]})
        for split in ("train", "dev")})
    bioes.save_to_disk(str(tmp_path / "bioes"))
    d = read_data(tmp_path / "bioes", "hf")
    assert d.splits["val"].tags == [["B-LOC", "I-LOC", "O"], ["B-PER"]]


def test_a_missing_column_is_one_line_naming_it_and_the_columns_there(demo_pair):
    _, hf = demo_pair
    with pytest.raises(DataError) as e:
        read_data(hf, "hf", columns=("words", "ner_tags"))
    assert str(e.value) == (f"{hf}/train: no column 'words' (its columns: tokens, ner_tags); "
                            "trainer.hf_tokens_column names another")


def test_a_missing_split_names_the_splits_there(tmp_path):
    ds = datasets.Dataset.from_dict({"tokens": [["A"]], "ner_tags": [["O"]]})
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "d"))
    with pytest.raises(DataError, match=r"no val split \(looked for validation, val, dev; "
                                        r"its splits: train, test\)"):
        read_data(tmp_path / "d", "hf")


def test_a_hub_name_passes_the_study_file_check_with_data_format_hf(tmp_path):
    from hpsearch.config import load_study
    from hpsearch.errors import ConfigError

    path = write_study(tmp_path, "some-org/some-ner", trainer={"data_format": "hf"})
    assert load_study(path).trainer.data_dir == "some-org/some-ner"
    with pytest.raises(ConfigError, match="does not exist"):
        load_study(write_study(tmp_path, "some-org/some-ner", file="plain.yaml"))


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "conll2003").is_dir(),
                    reason="../shared/data/conll2003 absent")
def test_a_saved_conll_slice_trains_to_the_same_f1_as_the_same_sentences_as_files(tmp_path):
    from hpsearch.config import TrainerConfig
    from hpsearch.trainer import prepare, train

    src = SHARED_DATA / "conll2003"
    files = bert_ner_slice(src, tmp_path / "files", {"train": 300, "val": 100})
    hf = save_as_dataset(files, tmp_path / "hf", _lines(src / "tags.txt"))
    results = []
    for data, fmt in ((files, "bert-ner"), (hf, "hf")):
        cfg = TrainerConfig(**{**TINY, "data_dir": str(data), "data_format": fmt, "seed": 0,
                               "learning_rate": 5e-3})
        prep = prepare(cfg, data, tmp_path / f"cache-{fmt}")
        results.append(train(cfg, prep, tmp_path / f"trial-{fmt}"))
    a, b = results
    assert a.value > 0  # the tiny model learns something, so equal scores mean something
    assert (a.value, a.history) == (b.value, b.history)


@pytest.mark.slow
@pytest.mark.parametrize("offline", [False, True])
def test_a_hub_dataset_without_the_hub_fails_in_seconds_in_one_line(tmp_path, offline):
    path = write_study(tmp_path, "no-such-org/no-such-data", trainer={"data_format": "hf"})
    assert_no_hub_fails_fast(path, tmp_path, offline, "no-such-org/no-such-data")


def test_the_test_split_is_read_by_its_name(tmp_path):
    ds = datasets.Dataset.from_dict({"tokens": [["Ann", "ran"]], "ner_tags": [["B-PER", "O"]]})
    datasets.DatasetDict({"train": ds, "validation": ds, "test": ds}).save_to_disk(
        str(tmp_path / "d"))
    d = read_data(tmp_path / "d", "hf", splits=("test",))
    assert d.splits["test"].tags == [["B-PER", "O"]]


def test_without_the_datasets_package_the_error_says_what_to_install(demo_pair, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` meets uninstalled
    with pytest.raises(DataError) as e:
        read_data(demo_pair[1])
    assert str(e.value) == "data_format: hf needs the datasets package (pip install 'hpsearch[hf]')"


def test_a_name_the_hub_does_not_know_is_one_line(monkeypatch):
    import http.server
    import threading

    from huggingface_hub import constants

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # the name http.server calls
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    try:
        with pytest.raises(DataError) as e:
            read_data("no-such-org/no-such-data", "hf")
    finally:
        server.shutdown()
    assert str(e.value) == ("trainer.data_dir: no folder 'no-such-org/no-such-data' and no "
                            f"dataset of that name on the hub ({endpoint})")


def test_the_columns_count_in_a_study_fingerprint_only_when_set(tmp_path):
    """A study recorded before the columns existed resumes; renaming a column is a change."""
    from hpsearch.config import study_fingerprint

    plain = study_fingerprint(study_config(tmp_path, "d"))["trainer"]
    assert not {"hf_tokens_column", "hf_tags_column"} & set(plain)
    named = study_config(tmp_path, "d", trainer={"data_format": "hf", "hf_tags_column": "tags"})
    assert study_fingerprint(named)["trainer"]["hf_tags_column"] == "tags"

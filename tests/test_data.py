"""Data files: every problem is one line naming file and line; repairable input is repaired."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpsearch.trainer.data import DataError, read_data


def make(root: Path, train=("A B C", "D E"), tags=("B-PER I-PER O", "O B-LOC"), tagset=None,
         val=None, raw: dict[str, bytes] | None = None) -> Path:
    for split, (s, t) in {"train": (train, tags), "val": val or (train, tags)}.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        (root / split / "sentences.txt").write_text("".join(x + "\n" for x in s))
        (root / split / "tags.txt").write_text("".join(x + "\n" for x in t))
    if tagset is not None:
        (root / "tags.txt").write_text("".join(x + "\n" for x in tagset))
    for rel, data in (raw or {}).items():
        (root / rel).write_bytes(data)
    return root


def err(root: Path) -> str:
    with pytest.raises(DataError) as e:
        read_data(root)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_reads_bert_ner_layout(tmp_path):
    d = read_data(make(tmp_path))
    assert d.splits["train"].sentences == [["A", "B", "C"], ["D", "E"]]
    assert d.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]


def test_count_mismatch_names_file_and_line(tmp_path):
    root = make(tmp_path, tags=("B-PER I-PER O", "O"))
    assert err(root) == (
        f"{root / 'train' / 'tags.txt'}:2: 1 tags for 2 tokens in "
        f"{root / 'train' / 'sentences.txt'}"
    )


def test_line_count_mismatch_gives_both_counts(tmp_path):
    root = make(tmp_path, tags=("B-PER I-PER O",))
    assert "1 tag lines but 2 sentence lines" in err(root)


def test_tag_outside_the_tag_set_is_one_error_naming_file_and_line(tmp_path):
    root = make(tmp_path, tags=("B-PER I-PER O", "O B-GPE"), tagset=["O", "B-PER", "I-PER",
                                                                      "B-LOC", "I-LOC"])
    assert err(root) == f"{root / 'train' / 'tags.txt'}:2: unknown tag 'B-GPE' (not in the tag set)"


def test_label_that_is_not_bio_or_bioes_is_rejected(tmp_path):
    assert "'PERSON' is not a BIO/BIOES tag" in err(make(tmp_path, tags=("PERSON O O", "O O")))


def test_non_utf8_names_line(tmp_path):
    root = make(tmp_path, raw={"train/sentences.txt": b"A B C\nD \xff\n"})
    assert err(root) == f"{root / 'train' / 'sentences.txt'}:2: not valid UTF-8 (byte 0xff)"


def test_empty_file_is_one_error_naming_it(tmp_path):
    root = make(tmp_path, raw={"val/sentences.txt": b""})
    assert err(root) == f"{root / 'val' / 'sentences.txt'}: file is empty"


def test_missing_val_split_is_one_error_naming_the_folder(tmp_path):
    root = make(tmp_path)
    for f in (root / "val").iterdir():
        f.unlink()
    (root / "val").rmdir()
    assert err(root) == f"{root / 'val'}: missing val split"


def test_crlf_is_accepted(tmp_path):
    root = make(tmp_path, raw={"train/sentences.txt": b"A B C\r\nD E\r\n",
                               "train/tags.txt": b"B-PER I-PER O\r\nO B-LOC\r\n"})
    assert read_data(root).splits["train"].tags == [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]


def test_bioes_tags_and_tag_set_become_bio(tmp_path):
    root = make(tmp_path, train=("A B C D", "E"), tags=("B-PER E-PER O S-LOC", "S-ORG"),
                tagset=["O", "B-PER", "I-PER", "E-PER", "S-PER", "B-LOC", "I-LOC", "E-LOC",
                        "S-LOC", "B-ORG", "I-ORG", "E-ORG", "S-ORG"])
    d = read_data(root)
    assert d.splits["train"].tags == [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG"]]
    assert d.labels == ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]


def test_entity_opening_with_i_becomes_b(tmp_path):
    d = read_data(make(tmp_path, tags=("I-PER I-PER O", "O I-LOC")))
    assert d.splits["train"].tags == [["B-PER", "I-PER", "O"], ["O", "B-LOC"]]


def test_conll_files_give_the_last_column_skip_docstart_and_read_dev_as_val(tmp_path):
    (tmp_path / "train.txt").write_text(
        "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP I-PER\n"
    )
    (tmp_path / "dev.txt").write_text("Paris NNP B-NP I-LOC\n")
    d = read_data(tmp_path)
    assert d.splits["train"].sentences == [["EU", "rejects"], ["Peter"]]
    assert d.splits["train"].tags == [["B-ORG", "O"], ["B-PER"]]
    assert d.splits["val"].tags == [["B-LOC"]]


def test_content_fingerprint_follows_data(tmp_path):
    a = read_data(make(tmp_path / "a")).fingerprint()
    b = read_data(make(tmp_path / "b")).fingerprint()
    c = read_data(make(tmp_path / "c", train=("A B X", "D E"))).fingerprint()
    assert a == b != c


@pytest.mark.slow
def test_cli_reports_data_error(tmp_path, demo_dir):
    from conftest import cli, write_study

    root = make(tmp_path / "data", tags=("B-PER I-PER O", "O"))
    r = cli("train", str(write_study(tmp_path, root)), "--set", "learning_rate=1e-3")
    assert r.exit_code == 2
    assert r.stderr.strip() == (
        f"error: {root / 'train' / 'tags.txt'}:2: 1 tags for 2 tokens in "
        f"{root / 'train' / 'sentences.txt'}"
    )


def test_a_process_that_edits_its_data_is_not_handed_the_old_sentences(tmp_path, demo_dir):
    """A notebook runs a study, fixes a sentence, runs again: the second run trains on the fix."""
    import shutil

    from conftest import TINY

    from hpsearch.config import TrainerConfig
    from hpsearch.trainer import prepare

    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    cfg = TrainerConfig(**{**TINY, "data_dir": str(data), "train_limit": 20})
    first = prepare(cfg, data, None)
    assert prepare(cfg, data, None).source == "memory"
    sentences = data / "train" / "sentences.txt"
    lines = sentences.read_text().splitlines()
    lines[0] = " ".join(["zebra"] * len(lines[0].split()))
    sentences.write_text("\n".join(lines) + "\n")
    second = prepare(cfg, data, None)
    assert second.source != "memory"
    assert second.train.ids.tolist() != first.train.ids.tolist()

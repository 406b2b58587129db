"""The demo data set: the format the trainer reads, and the guarantees the demo relies on."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hpsearch import demo_data
from hpsearch.demo_data import SPLITS, TAGS, generate_demo_data

SIZES = {"n_train": 400, "n_val": 120, "n_test": 90}
ALL_FILES = ["tags.txt"] + [f"{s}/{f}" for s in SPLITS for f in ("sentences.txt", "tags.txt")]


def read_lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    text = raw.decode("utf-8")
    assert b"\r" not in raw, path
    assert text.endswith("\n"), path
    lines = text[:-1].split("\n")
    assert all(line.strip() for line in lines), f"{path}: empty line"
    return lines


def read_split(root: Path, split: str) -> list[tuple[list[str], list[str]]]:
    sentences = read_lines(root / split / "sentences.txt")
    tags = read_lines(root / split / "tags.txt")
    assert len(sentences) == len(tags)
    return [(s.split(" "), t.split(" ")) for s, t in zip(sentences, tags)]


def entities(tokens: list[str], tags: list[str]) -> list[tuple[str, str]]:
    spans: list[tuple[str, list[str]]] = []
    for token, tag in zip(tokens, tags):
        if tag.startswith("B-"):
            spans.append((tag[2:], [token]))
        elif tag.startswith("I-"):
            spans[-1][1].append(token)
    return [(etype, " ".join(words)) for etype, words in spans]


def snapshot(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo_data(tmp_path_factory.mktemp("demo") / "data", **SIZES, seed=0)


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data set the demo actually uses: default sizes and seed."""
    return generate_demo_data(tmp_path_factory.mktemp("full") / "data")


def test_splits_hold_valid_bio_sentences_of_6_to_30_tokens_with_all_three_types(demo: Path) -> None:
    for name in ALL_FILES:
        assert (demo / name).is_file(), name
    assert read_lines(demo / "tags.txt") == list(TAGS)
    assert TAGS[0] == "O"
    for split in SPLITS:
        rows = read_split(demo, split)
        assert len(rows) == SIZES[f"n_{split}"]
        for tokens, tags in rows:
            assert len(tokens) == len(tags)
            assert all(tokens) and all(tags)
            assert set(tags) <= set(TAGS)
            for prev, tag in zip(["O", *tags], tags):
                if tag.startswith("I-"):
                    assert prev in (f"B-{tag[2:]}", tag), (tokens, tags)
            assert 6 <= len(tokens) <= 30
        types = {etype for tokens, tags in rows for etype, _ in entities(tokens, tags)}
        assert types == {"LOC", "ORG", "PER"}, split


def test_default_sizes_are_1500_300_and_300_sentences(full: Path) -> None:
    assert [len(read_split(full, s)) for s in SPLITS] == [1500, 300, 300]


def test_content_is_not_trivial(full: Path) -> None:
    rows = read_split(full, "train")
    counts = [len(entities(tokens, tags)) for tokens, tags in rows]
    assert 0 in counts
    assert max(counts) >= 3
    ents = {e for tokens, tags in rows for e in entities(tokens, tags)}
    # Same word, different roles: the model has to read the context.
    assert {("PER", "Jordan"), ("LOC", "Jordan")} <= ents
    words_tagged_o = {w for tokens, tags in rows for w, t in zip(tokens, tags) if t == "O"}
    assert {"apple", "May"} <= words_tagged_o
    assert ("ORG", "Apple") in ents and ("PER", "May") in ents
    # Longest entries per type stay within the advertised sizes.
    longest = {}
    for etype, text in ents:
        longest[etype] = max(longest.get(etype, 0), len(text.split()))
    assert longest == {"PER": 3, "LOC": 3, "ORG": 4}


def test_some_val_entities_are_held_out_of_train(full: Path) -> None:
    train = {e for tokens, tags in read_split(full, "train") for e in entities(tokens, tags)}
    for split in ("val", "test"):
        mentions = [e for tokens, tags in read_split(full, split) for e in entities(tokens, tags)]
        unseen = [e for e in mentions if e not in train]
        assert unseen
        assert 0.1 < len(unseen) / len(mentions) < 0.35, split


def test_same_seed_writes_identical_files_and_another_seed_other_sentences(tmp_path: Path) -> None:
    a = snapshot(generate_demo_data(tmp_path / "a", **SIZES, seed=7))
    b = snapshot(generate_demo_data(tmp_path / "b", **SIZES, seed=7))
    c = snapshot(generate_demo_data(tmp_path / "c", **SIZES, seed=8))
    assert a == b
    assert a["train/sentences.txt"] != c["train/sentences.txt"]
    assert a["val/sentences.txt"] != c["val/sentences.txt"]


def test_val_and_test_do_not_depend_on_train_size(tmp_path: Path) -> None:
    small = generate_demo_data(tmp_path / "small", n_train=50, n_val=40, n_test=30, seed=3)
    big = generate_demo_data(tmp_path / "big", n_train=500, n_val=40, n_test=30, seed=3)
    for split in ("val", "test"):
        assert snapshot(small / split) == snapshot(big / split)


def test_idempotent_and_leaves_no_temp_dirs(tmp_path: Path) -> None:
    out = tmp_path / "data"
    first = generate_demo_data(out, **SIZES)
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    second = generate_demo_data(out, **SIZES, seed=1)  # other arguments: still left as is
    assert first == second == out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == mtimes
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_str_path_is_accepted_and_missing_parents_are_created(tmp_path: Path) -> None:
    out = generate_demo_data(str(tmp_path / "deep" / "er" / "data"), n_train=5, n_val=3, n_test=2)
    assert out == tmp_path / "deep" / "er" / "data"
    assert demo_data.is_complete(out)


def test_existing_real_data_set_is_left_alone(tmp_path: Path) -> None:
    root = tmp_path / "real"
    for name in ALL_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text("x\n", encoding="utf-8")
    assert generate_demo_data(root) == root
    assert (root / "train" / "sentences.txt").read_text(encoding="utf-8") == "x\n"
    assert not (root / demo_data.MARKER).exists()


def test_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    out = generate_demo_data(tmp_path / "data", n_train=5, n_val=3, n_test=2)
    assert demo_data.is_complete(out)
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_incomplete_folder_is_an_error_and_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "data"
    (out / "train").mkdir(parents=True)
    (out / "train" / "sentences.txt").write_text("half\n", encoding="utf-8")
    with pytest.raises(FileExistsError, match="not a complete data set"):
        generate_demo_data(out, n_train=5, n_val=3, n_test=2)
    assert (out / "train" / "sentences.txt").read_text(encoding="utf-8") == "half\n"
    assert [p.name for p in tmp_path.iterdir()] == ["data"]


def test_interrupted_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash(*args: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(demo_data, "_write_dataset", crash)
    with pytest.raises(KeyboardInterrupt):
        generate_demo_data(tmp_path / "data", n_train=5, n_val=3, n_test=2)
    assert list(tmp_path.iterdir()) == []


def test_loser_of_the_rename_race_uses_the_winner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every caller passes the "already there?" check before any of them renames, so all but
    # one must lose the rename and fall back to the winner's folder.
    n = 4
    barrier = threading.Barrier(n, timeout=30)
    build = demo_data.build_demo_splits

    def build_in_step(**kwargs: int) -> dict:
        barrier.wait()
        return build(**kwargs)

    monkeypatch.setattr(demo_data, "build_demo_splits", build_in_step)
    out = tmp_path / "data"
    results: list[object] = [None] * n

    def call(i: int) -> None:
        try:
            results[i] = generate_demo_data(out, n_train=30, n_val=10, n_test=10, seed=i)
        except BaseException as err:  # reported by the assertion below
            results[i] = err

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [out] * n
    assert [p.name for p in tmp_path.iterdir()] == ["data"]
    # One winner's files, whole: sentences and tags from the same generation.
    for split in SPLITS:
        assert len(read_split(out, split)) == {"train": 30, "val": 10, "test": 10}[split]


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_bad_size_is_rejected_before_anything_is_written(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="n_val"):
        generate_demo_data(tmp_path / "data", n_val=bad)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []

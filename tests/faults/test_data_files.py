"""Broken data files: one line naming the file and line, exit 2; CRLF and BIOES just work."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ONE_EPOCH, cli, trials_of, write_study
from helpers import copy_data
from optuna.trial import TrialState


def _append_line(path: Path, text: str) -> int:
    lines = path.read_text().splitlines()
    lines.append(text)
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def missing_split(d: Path):
    for f in (d / "val").iterdir():
        f.unlink()
    (d / "val").rmdir()
    return d / "val", None


def empty_file(d: Path):
    (d / "train" / "tags.txt").write_text("")
    return d / "train" / "tags.txt", None


def token_tag_mismatch(d: Path):
    s, t = d / "train" / "sentences.txt", d / "train" / "tags.txt"
    _append_line(s, "Anna lives in Oslo .")
    return t, _append_line(t, "B-PER O O B-LOC")


def unknown_tag(d: Path):
    _append_line(d / "train" / "sentences.txt", "Anna lives in Oslo .")
    return d / "train" / "tags.txt", _append_line(d / "train" / "tags.txt", "B-PER O O B-GPE O")


def non_utf8_bytes(d: Path):
    s = d / "train" / "sentences.txt"
    lines = s.read_bytes().split(b"\n")
    lines[4] = lines[4] + b" caf\xe9"
    s.write_bytes(b"\n".join(lines))
    t = d / "train" / "tags.txt"
    tl = t.read_text().split("\n")
    tl[4] += " O"
    t.write_text("\n".join(tl))
    return s, 5


@pytest.mark.parametrize(
    "fault", [missing_split, empty_file, token_tag_mismatch, unknown_tag, non_utf8_bytes],
    ids=lambda f: f.__name__,
)
def test_bad_data_file_is_one_line_naming_file_and_line_exit_2(tmp_path, demo_dir, fault):
    data = copy_data(demo_dir, tmp_path / "data")
    where, line = fault(data)
    r = cli("run", str(write_study(tmp_path, data, trainer=ONE_EPOCH)))
    assert r.exit_code == 2, r.output
    msg = r.stderr.strip()
    assert msg.count("\n") == 0 and msg.startswith("error: "), msg
    assert str(where) in msg
    if line is not None:
        assert f"{where}:{line}:" in msg
    assert "Traceback" not in r.output


@pytest.mark.slow
def test_crlf_and_bioes_files_are_accepted_and_converted(tmp_path, demo_dir):
    data = copy_data(demo_dir, tmp_path / "data")
    for split in ("train", "val"):
        for name in ("sentences.txt", "tags.txt"):
            f = data / split / name
            f.write_bytes(f.read_bytes().replace(b"\n", b"\r\n"))
        # BIO -> BIOES: single-token entities become S-, the last token of a span E-.
        t = data / split / "tags.txt"
        out = []
        for line in t.read_text().splitlines():
            tags = line.split()
            for i, tag in enumerate(tags):
                nxt = tags[i + 1] if i + 1 < len(tags) else "O"
                if tag.startswith(("B-", "I-")) and not nxt.startswith("I-"):
                    tags[i] = ("S-" if tag[0] == "B" else "E-") + tag[2:]
            out.append(" ".join(tags))
        t.write_text("\r\n".join(out) + "\r\n")
    (data / "tags.txt").unlink()  # the tag set is read from the (converted) files
    path = write_study(tmp_path, data, n_trials=1, trainer=ONE_EPOCH)
    r = cli("run", str(path))
    assert r.exit_code == 0, r.output
    (t,) = trials_of(path)
    assert t.state == TrialState.COMPLETE
    per_type = t.user_attrs["best_scores"]["per_type"]
    assert set(per_type) == {"LOC", "ORG", "PER"}  # S-/E- became B-/I- of the same types

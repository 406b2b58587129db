"""Word alignment, windows for long sentences, batching by token budget, the on-disk cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from hpsearch.config import ScratchModel, TrainerConfig
from hpsearch.trainer.batching import collate, make_batches, padded
from hpsearch.trainer.data import read_data
from hpsearch.trainer.evaluation import evaluate
from hpsearch.trainer.features import IGNORE, Encoded, encode, encode_cached, words_of_windows
from hpsearch.trainer.modeling import build_model, train_wordpiece


@pytest.fixture(scope="module")
def tok(demo_dir, tmp_path_factory):
    data = read_data(demo_dir)
    return train_wordpiece(data.splits["train"].sentences, ScratchModel(vocab_size=500),
                           tmp_path_factory.mktemp("tok"))


LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
L2I = {lab: i for i, lab in enumerate(LABELS)}


def test_first_subword_carries_the_label(tok):
    words = ["Zyxwvutsrqponm", "visited", "Lisbon"]
    tags = ["B-PER", "O", "B-LOC"]
    enc = encode([words], [tags], tok, L2I, 64)
    ids, labels = enc.window(0)
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    n_pieces = len(tok(words[0], add_special_tokens=False)["input_ids"])
    assert n_pieces > 1  # a rare word is split into several pieces
    assert labels[1] == L2I["B-PER"] and set(labels[2 : 1 + n_pieces]) == {IGNORE}
    assert [lab for lab in labels if lab != IGNORE] == [L2I[t] for t in tags]


def test_long_sentence_is_windowed_and_fully_predicted(tok):
    words = (["Ana", "met", "Rui", "in", "Porto", "and"] * 12)[:70]
    tags = (["B-PER", "O", "B-PER", "O", "B-LOC", "O"] * 12)[:70]
    short = [["Rui", "left"]], [["B-PER", "O"]]
    enc = encode([words, *short[0]], [tags, *short[1]], tok, L2I, max_length=16)
    windows_of_long = int((enc.sentence == 0).sum())
    assert windows_of_long >= 70 // 14  # split, not truncated
    assert enc.lengths.max() <= 16
    # Every word of the long sentence has exactly one labelled position across its windows.
    preds = [lab for w in range(len(enc)) for lab in [enc.window(w)[1]]]
    joined = words_of_windows(enc, preds)
    assert len(joined[0]) == 70 and [LABELS[i] for i in joined[0]] == tags

    cfg = TrainerConfig(data_dir="demo", scratch=ScratchModel(hidden_size=16, num_attention_heads=2,
                        num_hidden_layers=1, intermediate_size=32))
    torch.manual_seed(0)
    model = build_model(cfg, tok, LABELS)
    gold = [tags, short[1][0]]
    scores = evaluate(model, enc, gold, LABELS, device=torch.device("cpu"), amp=None,
                      pad_id=tok.pad_token_id, max_tokens=256)
    # Gold and predicted sequences had equal lengths (or evaluate would raise), and every
    # entity of the long sentence is in the support.
    n_per = tags.count("B-PER") + 1
    assert scores["per_type"]["PER"]["support"] == n_per
    assert scores["per_type"]["LOC"]["support"] == tags.count("B-LOC")


def test_token_budget_batches_cover_everything_once():
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=1000)
    batches = make_batches(lengths, max_tokens=2048, seed=1, epoch=0)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(1000))
    for b in batches:
        assert padded(int(lengths[b].max())) * len(b) <= 2048
    # Bucketing: far less padding than random batches of the same count.
    waste = sum(padded(int(lengths[b].max())) * len(b) - lengths[b].sum() for b in batches)
    assert waste / lengths.sum() < 0.15


def test_batch_order_depends_only_on_seed_and_epoch():
    lengths = np.arange(1, 300) % 50 + 2
    a = make_batches(lengths, max_tokens=512, seed=3, epoch=2)
    b = make_batches(lengths, max_tokens=512, seed=3, epoch=2)
    c = make_batches(lengths, max_tokens=512, seed=3, epoch=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))


def test_fixed_batch_size_gives_full_batches_and_one_remainder():
    lengths = np.full(100, 10)
    batches = make_batches(lengths, batch_size=32, seed=0, epoch=0)
    assert sorted(len(b) for b in batches) == [4, 32, 32, 32]


def test_collate_pads_to_multiple_of_8(tok):
    enc = encode([["a", "b", "c"], ["d"]], [["O"] * 3, ["O"]], tok, L2I, 32)
    b = collate(enc, np.array([0, 1]), tok.pad_token_id)
    assert b["input_ids"].shape[1] % 8 == 0
    assert b["attention_mask"].sum().item() == int(enc.lengths.sum())
    assert (b["labels"][b["attention_mask"] == 0] == IGNORE).all()


def test_cache_roundtrip_and_refuses_pickle(tok, tmp_path):
    args = ([["a", "b"]], [["O", "B-PER"]], tok, L2I, 32)
    enc, hit = encode_cached(tmp_path, "k", *args)
    again, hit2 = encode_cached(tmp_path, "k", *args)
    assert (hit, hit2) == (False, True)
    assert np.array_equal(enc.ids, again.ids) and np.array_equal(enc.labels, again.labels)
    # A planted pickle payload in the cache is never unpickled: it is rebuilt instead.
    planted = tmp_path / "features-p.npz"
    np.savez(planted, ids=np.array([object()], dtype=object))
    with pytest.raises(ValueError):
        Encoded.load(planted)
    enc3, hit3 = encode_cached(tmp_path, "p", *args)
    assert hit3 is False and np.array_equal(enc3.ids, enc.ids)


def test_fixed_shape_collate_pads_rows_and_width(tok):
    """The fast path's batches: one shape per bucket, filler rows that carry no label."""
    enc = encode([["a", "b", "c"], ["d"]], [["O"] * 3, ["O"]], tok, L2I, 32)
    b = collate(enc, np.array([0, 1]), tok.pad_token_id, width=16, rows=5)
    assert tuple(b["input_ids"].shape) == (5, 16)
    assert (b["labels"][2:] == IGNORE).all()
    # Each filler row attends to exactly one token: none attends to nothing (NaN attention).
    assert b["attention_mask"][2:].sum(1).tolist() == [1, 1, 1]
    assert b["attention_mask"][:2].sum().item() == int(enc.lengths.sum())


@pytest.mark.slow
def test_scratch_tokenizer_is_the_same_in_every_process(tmp_path, demo_dir):
    """Same data, same vocabulary: otherwise the same seed gives another F1 in every study."""
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from hpsearch.config import ScratchModel; "
        "from hpsearch.trainer.data import read_data; "
        "from hpsearch.trainer.modeling import train_wordpiece; "
        "s = read_data(sys.argv[1]).splits['train'].sentences; "
        "t = train_wordpiece(s, ScratchModel(vocab_size=300), Path(sys.argv[2])); "
        "print(sorted(t.get_vocab().items(), key=lambda kv: kv[1]))"
    )
    vocabs = [
        subprocess.run([sys.executable, "-c", code, str(demo_dir), str(tmp_path / f"t{i}")],
                       capture_output=True, text=True, check=True,
                       env={**os.environ, "PYTHONHASHSEED": str(i)}).stdout
        for i in range(2)
    ]
    assert vocabs[0] == vocabs[1] and vocabs[0].count("', ") == 300


def test_the_token_cache_is_rebuilt_when_the_tokenizer_or_max_length_changes(tmp_path,
                                                                              demo_dir):
    """The disk cache of tokenised windows answers only for the same tokenizer and max_length:
    a study that changes either trains on windows cut for its own settings."""
    from conftest import TINY

    from hpsearch.config import TrainerConfig
    from hpsearch.trainer import inputs, prepare

    cache = tmp_path / "cache"

    def fresh(**over):  # as a new process finds it: nothing in memory, the disk cache there
        inputs._MEMO.clear()
        cfg = TrainerConfig(**{**TINY, "data_dir": str(demo_dir), "train_limit": 60, **over})
        return prepare(cfg, demo_dir, cache)

    first = fresh()
    assert first.source == "built"
    assert fresh().source == "disk cache"
    short = fresh(max_length=16)
    assert short.source == "built" and short.train.lengths.max() <= 16
    assert first.train.lengths.max() > 16
    from hpsearch.trainer.features import tokenizer_fingerprint

    lower = fresh(scratch={**TINY["scratch"], "lowercase": True})  # another tokenizer
    assert tokenizer_fingerprint(lower.tokenizer) != tokenizer_fingerprint(first.tokenizer)
    assert lower.source == "built"
    assert fresh(max_length=16).source == "disk cache"  # each kept under its own key

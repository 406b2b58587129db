"""Entity-level scores from seqeval: what NER papers and users report, not token accuracy."""

from __future__ import annotations

import warnings

from seqeval.metrics import classification_report


def ner_scores(gold: list[list[str]], pred: list[list[str]], mode: str = "default") -> dict:
    """Micro P/R/F1 over entities, macro and support-weighted F1, each type's P/R/F1/support
    (also as ``f1:TYPE``, so one type's F1 can be a study's metric) and token accuracy.

    ``mode="strict"`` is seqeval's strict IOB2 scoring: an entity counts only when its ``B-``
    opens it, so an ``I-`` that opens an entity (which the default mode, like conlleval,
    takes as a ``B-``) is a miss.
    """
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise AssertionError(f"sentence {i}: {len(g)} gold tags but {len(p)} predictions")
    strict = {}
    if mode == "strict":
        from seqeval.scheme import IOB2

        strict = {"mode": "strict", "scheme": IOB2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on types with no prediction yet
        rep = classification_report(gold, pred, output_dict=True, zero_division=0, **strict)
    per_type = {
        k: {m: float(v[m]) for m in ("precision", "recall", "f1-score", "support")}
        for k, v in rep.items()
        if not k.endswith(" avg")
    }
    none = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0}
    micro = rep.get("micro avg", none)
    n = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "macro_f1": float(rep.get("macro avg", none)["f1-score"]),
        "weighted_f1": float(rep.get("weighted avg", none)["f1-score"]),
        "accuracy": correct / n if n else 0.0,
        **{f"f1:{t}": m["f1-score"] for t, m in per_type.items()},
        "per_type": per_type,
    }


def format_report(scores: dict) -> str:
    """A classification report in the familiar seqeval/sklearn layout."""
    lines = [f"{'':>12} {'precision':>10} {'recall':>10} {'f1-score':>10} {'support':>8}"]
    for typ, m in sorted(scores["per_type"].items()):
        lines.append(
            f"{typ:>12} {m['precision']:>10.4f} {m['recall']:>10.4f} {m['f1-score']:>10.4f} "
            f"{int(m['support']):>8}"
        )
    support = int(sum(m["support"] for m in scores["per_type"].values()))
    lines.append(
        f"{'micro avg':>12} {scores['precision']:>10.4f} {scores['recall']:>10.4f} "
        f"{scores['f1']:>10.4f} {support:>8}"
    )
    for name, key in (("macro avg", "macro_f1"), ("weighted avg", "weighted_f1")):
        if key in scores:
            lines.append(f"{name:>12} {'':>10} {'':>10} {scores[key]:>10.4f} {support:>8}")
    return "\n".join(lines)

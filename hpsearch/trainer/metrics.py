"""Entity-level scores from seqeval: what NER papers and users report, not token accuracy."""

from __future__ import annotations

import warnings

from seqeval.metrics import classification_report


def ner_scores(gold: list[list[str]], pred: list[list[str]]) -> dict:
    """Micro P/R/F1 over entities, per-type P/R/F1/support and token accuracy."""
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise AssertionError(f"sentence {i}: {len(g)} gold tags but {len(p)} predictions")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns on types with no prediction yet
        rep = classification_report(gold, pred, output_dict=True, zero_division=0)
    per_type = {
        k: {m: float(v[m]) for m in ("precision", "recall", "f1-score", "support")}
        for k, v in rep.items()
        if not k.endswith(" avg")
    }
    micro = rep.get("micro avg", {"precision": 0.0, "recall": 0.0, "f1-score": 0.0})
    n = sum(len(g) for g in gold)
    correct = sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p))
    return {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "accuracy": correct / n if n else 0.0,
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
    lines.append(
        f"{'micro avg':>12} {scores['precision']:>10.4f} {scores['recall']:>10.4f} "
        f"{scores['f1']:>10.4f}"
    )
    return "\n".join(lines)

"""Classification metrics: accuracy, macro-F1 and per-label precision/recall/F1."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def classification_metrics(golds: Sequence[str], preds: Sequence[str], labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Scores in 0..1; labels default to every label seen in golds or preds."""
    if len(golds) != len(preds):
        raise ValueError("golds and preds differ in length")
    names = list(labels) if labels else sorted(set(golds) | set(preds))
    per_label: dict[str, dict[str, float]] = {}
    for name in names:
        tp = sum(g == name and p == name for g, p in zip(golds, preds, strict=True))
        fp = sum(g != name and p == name for g, p in zip(golds, preds, strict=True))
        fn = sum(g == name and p != name for g, p in zip(golds, preds, strict=True))
        precision = tp / (tp + fp) if tp + fp else 0.0
        recall = tp / (tp + fn) if tp + fn else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_label[name] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "support": tp + fn}
    correct = sum(g == p for g, p in zip(golds, preds, strict=True))
    return {
        "accuracy": round(correct / len(golds), 4) if golds else 0.0,
        "macro_f1": round(sum(v["f1"] for v in per_label.values()) / len(per_label), 4) if per_label else 0.0,
        "per_label": per_label,
        "n": len(golds),
    }

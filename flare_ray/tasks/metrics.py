"""Metrics, from scikit-learn and torchmetrics (SQuAD's official normalisation and F1), imported when scoring.

Predictions are label strings (or answer strings for QA); ``None`` is a
generated string that is no label: it counts as wrong and is reported as
``invalid``.
"""

from __future__ import annotations

from typing import Sequence

INVALID = "<invalid>"
CLASSIFICATION_METRICS = ("accuracy", "macro_f1", "invalid")  # the keys of classification_scores
QA_METRICS = ("exact_match", "f1")  # the keys of squad_scores


def better(score: float, best: float, mode: str) -> bool:
    """Is ``score`` better than ``best`` when the metric is maximised (``mode`` max) or minimised?"""
    return score > best if mode == "max" else score < best


def classification_scores(
    predictions: Sequence[str | None], references: Sequence[str], labels: Sequence[str]
) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    predicted = [INVALID if p is None else p for p in predictions]
    return {
        "accuracy": 100.0 * accuracy_score(references, predicted),
        "macro_f1": 100.0 * f1_score(references, predicted, labels=list(labels), average="macro", zero_division=0),
        "invalid": float(sum(p is None for p in predictions)),
    }


def squad_scores(predictions: Sequence[str | None], references: Sequence[Sequence[str]]) -> dict[str, float]:
    """SQuAD exact match and F1 on normalised answer strings (each reference: all gold answers)."""
    from torchmetrics.functional.text import squad

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    preds = [{"id": str(i), "prediction_text": p or ""} for i, p in enumerate(predictions)]
    target = [
        {"id": str(i), "answers": {"text": list(gold), "answer_start": [0] * len(gold)}}
        for i, gold in enumerate(references)
    ]
    result = squad(preds, target)
    return {"exact_match": float(result["exact_match"]), "f1": float(result["f1"])}

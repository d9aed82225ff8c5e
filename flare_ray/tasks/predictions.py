"""Per-example predictions: one row per example of a scored split, written as parquet with every trial.

Columns: ``id``, ``language``, ``split``, ``epoch``, ``gold`` (the label, or the list of gold answers),
``prediction`` (the label or answer string; null for a generation that is no label) and the
per-example scores (``correct`` for classification; ``exact_match`` and ``f1`` for QA, on SQuAD's
normalised strings). :func:`score_frame` recomputes the split's metrics from such a table exactly,
so every table can be rebuilt from the records and comparisons paired by example id.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from .base import Task
from .metrics import classification_scores, squad_scores


def gold_of(task: Task, records) -> list:
    """The gold label of each record, or for QA the list of its gold answer strings."""
    if task.labels:
        return list(records["label"])
    return [[a["text"] for a in answers] for answers in records["target_answers"]]


def predictions_frame(
    task: Task, records, predictions: Sequence[str | None], split: str, epoch: int | None
) -> pd.DataFrame:
    gold = gold_of(task, records)
    frame = pd.DataFrame(
        {
            "id": list(records["id"]),
            "language": task.language,
            "split": split,
            "epoch": epoch,
            "gold": gold,
            "prediction": list(predictions),
        }
    )
    if task.labels:
        frame["correct"] = [float(p == g) for p, g in zip(predictions, gold)]
    else:
        each = [squad_scores([p], [g]) for p, g in zip(predictions, gold)]
        frame["exact_match"] = [s["exact_match"] for s in each]
        frame["f1"] = [s["f1"] for s in each]
    return frame


def score_frame(task: Task, frame: pd.DataFrame) -> dict[str, float]:
    """The split's metrics from its predictions table (equal to what the trial logged)."""
    predictions = [None if p is None or (isinstance(p, float) and pd.isna(p)) else p for p in frame["prediction"]]
    if task.labels:
        return classification_scores(predictions, list(frame["gold"]), task.labels)
    return squad_scores(predictions, [list(g) for g in frame["gold"]])

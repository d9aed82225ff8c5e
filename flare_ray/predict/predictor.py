"""Predicting with a trial's adapter: the records, and the predictions of the evaluation's own path, one per
row (with ``scores``: how sure, :mod:`.scores`). Which columns the task and the method read: :mod:`.inputs`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import pandas as pd

from flare_ray.experiment.training import METHODS
from flare_ray.tasks import Task
from flare_ray.training.evaluate import predict_records
from flare_ray.training.setup import build_trial, english_side

from .english import TranslationReport, TranslationSettings, english_sources, translation_settings
from .inputs import InputPlan, columns_of, plan_input, reads_english
from .scores import scored_predictions

__all__ = ["InputPlan", "Prediction", "build_records", "columns_of", "plan_input", "predict", "reads_english"]

if TYPE_CHECKING:
    from flare_ray.experiment import ExperimentConfig


def build_records(task: Task, texts: dict[str, list[str]], sources: dict[str, list[str]]) -> datasets.Dataset:
    """Records in the task's schema (:mod:`flare_ray.tasks.base`), one per input row (id: the row number).

    Nothing here is gold: a classification record's ``label`` is empty, and a QA record's answers stand in
    for the encoder's span bookkeeping (the whole context of each side), never read by a prediction."""
    n = len(next(iter(texts.values())))
    rows = []
    for i in range(n):
        record: dict[str, Any] = {"id": str(i)}
        for f in task.text_fields:
            record[f"target_{f}"], record[f"source_{f}"] = texts[f][i], sources[f][i]
        if task.labels:
            record["label"] = None
        else:
            for side in ("target", "source"):
                record[f"{side}_answers"] = [{"text": record[f"{side}_context"], "answer_start": 0}]
        rows.append(record)
    return datasets.Dataset.from_list(rows)


@dataclass
class Prediction:
    predictions: list  # one per row: a label, an answer string, or None (a generation that is no label)
    translation: TranslationReport | None = None
    english: dict[str, list[str]] = field(default_factory=dict)  # the English side read, per field
    scores: pd.DataFrame | None = None  # with ``scores``: p_<label> per label, or the answer's score (QA)


def predict(
    experiment: ExperimentConfig,
    language: str,
    folder: Path,
    rows: pd.DataFrame,
    *,
    translation: TranslationSettings | None = None,
    where: Path | str = "input",
    scores: bool = False,
    verbose: bool = True,
) -> Prediction:
    """One prediction per row of ``rows`` by the adapter in ``folder`` (a trial's checkpoint, with the trial's
    ``experiment`` and ``language``), through the trial's setup and the evaluation's prediction path.

    ``rows`` has the task's target fields as columns and, for a method that reads English, ``source_<field>``;
    without those the English side is translated (``translation``, default :func:`translation_settings`).
    ``scores``: also how sure (:func:`.scores.scored_predictions`: the same predictions, and their scores)."""
    plan = plan_input(experiment, language, rows, where)
    task = plan.task
    texts = {f: list(rows[f]) for f in task.text_fields}
    report, english = None, {}
    if plan.sources_given:
        sources = {f: list(rows[f"source_{f}"]) for f in task.text_fields}
    elif plan.needs_english:
        settings = translation or translation_settings(experiment, language)
        sources, report = english_sources(task, texts, settings, verbose=verbose)
    else:
        sources = texts  # never read: the method reads no English side
    if plan.needs_english:
        english = sources
    records = build_records(task, texts, sources)
    run = build_trial(experiment, language, roles=(), adapter=Path(folder))
    if METHODS[experiment.method.kind].reads_english:  # translate-test: the model reads the English side
        records = english_side(task, records)
    table = None
    if scores:
        predictions, table = scored_predictions(run.encoder, run.model, records, experiment.training)
    else:
        predictions = predict_records(run.encoder, run.model, records, experiment.training)
    assert len(predictions) == len(rows), (len(predictions), len(rows))
    return Prediction(predictions, report, english, table)

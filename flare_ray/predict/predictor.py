"""Predicting with a trial's adapter: which columns the task and the method read, the records, and the
predictions of the evaluation's own path, one per row."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import pandas as pd

from flare_ray.experiment.training import METHODS
from flare_ray.tasks import Task, get_task
from flare_ray.training.evaluate import predict_records
from flare_ray.training.setup import build_trial, english_side

from .english import TranslationReport, TranslationSettings, english_sources, translation_settings
from .tables import PredictError

if TYPE_CHECKING:
    from flare_ray.experiment import ExperimentConfig


def reads_english(method) -> bool:
    """Does ``method`` (a MethodSpec) read the English side at inference? FLARE, X-Mixup and input-level fusion
    read it beside the target, translate-test instead of it; FLARE train-only (``source_at_inference: false``),
    FLARE-MT (its MT encoder reads the target), LoRA and zero-shot do not."""
    kind = METHODS[method.kind]
    if method.kind == "flare" and not method.flare.source_at_inference:
        return False
    return kind.source or kind.input_fusion or kind.reads_english


def columns_of(task: type[Task] | Task) -> tuple[list[str], list[str]]:
    """The input columns of a task: its target-language fields, and their English sides ``source_<field>``."""
    return list(task.text_fields), [f"source_{f}" for f in task.text_fields]


@dataclass(frozen=True)
class InputPlan:
    """What the input gives and what the model reads."""

    task: Task
    target_columns: list[str]
    source_columns: list[str]
    needs_english: bool  # the method reads an English side
    sources_given: bool  # the input has every source_<field> column

    @property
    def translate(self) -> bool:
        return self.needs_english and not self.sources_given


def plan_input(experiment: ExperimentConfig, language: str, rows: pd.DataFrame, where: Path | str) -> InputPlan:
    """The columns ``rows`` must have for the trial's task and method; :class:`PredictError` naming ``where``
    and the column for a missing column, a partial set of source columns, or a value that is no text."""
    task = get_task(experiment.task.task_config(language))
    targets, sources = columns_of(task)
    for column in targets:
        if column not in rows.columns:
            raise PredictError(
                f"{where}: missing column {column!r}: {task.name} reads the target-language text from {targets}"
                f" (English sides, where given: {sources}); the columns are {list(rows.columns)}"
            )
    given = [c for c in sources if c in rows.columns]
    if given and len(given) < len(sources):
        missing = [c for c in sources if c not in given]
        raise PredictError(
            f"{where}: missing column {missing[0]!r}: the English side is given in {given}, "
            f"so every one of {sources} is needed (or none: then it is translated)"
        )
    for column in targets + given:
        bad = [i for i, value in enumerate(rows[column]) if not isinstance(value, str)]
        if bad:
            value = rows[column].iloc[bad[0]]
            what = (
                "has no value"
                if value is None or (isinstance(value, float) and value != value)
                else f"is {value!r}, not a text"
            )
            raise PredictError(f"{where}: column {column!r}: row {bad[0] + 1} (counting from 1) {what}")
    return InputPlan(task, targets, sources, reads_english(experiment.method), sources_given=bool(given))


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


def predict(
    experiment: ExperimentConfig,
    language: str,
    folder: Path,
    rows: pd.DataFrame,
    *,
    translation: TranslationSettings | None = None,
    where: Path | str = "input",
) -> Prediction:
    """One prediction per row of ``rows`` by the adapter in ``folder`` (a trial's checkpoint, with the trial's
    ``experiment`` and ``language``), through the trial's setup and the evaluation's prediction path.

    ``rows`` has the task's target fields as columns and, for a method that reads English, ``source_<field>``;
    without those the English side is translated (``translation``, default :func:`translation_settings`)."""
    plan = plan_input(experiment, language, rows, where)
    task = plan.task
    texts = {f: list(rows[f]) for f in task.text_fields}
    report, english = None, {}
    if plan.sources_given:
        sources = {f: list(rows[f"source_{f}"]) for f in task.text_fields}
    elif plan.needs_english:
        sources, report = english_sources(task, texts, translation or translation_settings(experiment, language))
    else:
        sources = texts  # never read: the method reads no English side
    if plan.needs_english:
        english = sources
    records = build_records(task, texts, sources)
    run = build_trial(experiment, language, roles=(), adapter=Path(folder))
    if METHODS[experiment.method.kind].reads_english:  # translate-test: the model reads the English side
        records = english_side(task, records)
    predictions = predict_records(run.encoder, run.model, records, experiment.training)
    assert len(predictions) == len(rows), (len(predictions), len(rows))
    return Prediction(predictions, report, english)

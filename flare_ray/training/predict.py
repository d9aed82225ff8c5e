"""Use the winner: a trial's adapter, found in MLflow, predicting on new target-language text.

``python -m flare_ray.predict`` (:mod:`flare_ray.cli.predict`) reads it top to bottom:

1. :func:`read_rows`: the input table (jsonl, csv or tsv, by extension);
2. :func:`fetch_adapter`: the adapter of a registered model (``name``, ``name/version``) or of a run
   (its id), downloaded with its ``trial_config.json`` (the trial's experiment config and language);
3. :func:`plan_input`: which columns the task and the method read (the target fields, and the English
   ``source_<field>`` columns for the methods that read a source); bad input fails here with one line
   naming the file and the column, before any model is loaded;
4. :func:`predict`: records in the task's schema (:mod:`flare_ray.tasks.base`), the English side
   translated by :func:`english_sources` where the input has none (NLLB-200 on Ray Data, the job of
   :mod:`flare_ray.translate`, cached per segment), the adapter loaded by the trial's own setup
   (:func:`~flare_ray.training.setup.build_trial`) and the predictions of the evaluation's own path
   (:func:`flare_ray.training.evaluate._predict`): one per row.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import pandas as pd

from flare_ray.languages import ENGLISH, nllb_language
from flare_ray.models.loading import resolve_name_or_path
from flare_ray.tasks import Task, TaskConfig, get_task
from flare_ray.tasks.base import mt_split_path
from flare_ray.tracking import registry
from flare_ray.translate.config import DEFAULT_MODEL, TranslateConfig
from flare_ray.translate.pipeline import PIPELINE_VERSION
from flare_ray.translate.store import cached_provenance, provenance_path, sha256_json, write_split
from flare_ray.translate.translator import GREEDY, Segment, translate_with_ray

from .adapter import METHODS
from .evaluate import TRIAL_CONFIG_NAME, _predict
from .setup import build_trial, english_side

if TYPE_CHECKING:  # the experiment config is built above this package and handed down
    from flare_ray.experiment import ExperimentConfig

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
PREDICTION_COLUMN = "prediction"


class PredictError(ValueError):
    """Bad input to ``predict`` (file, column, model): one line, raised before any model is loaded."""


# -- the input and output tables ------------------------------------------------------------------------------
def table_format(path: Path) -> str:
    """``jsonl``, ``csv`` or ``tsv`` from the file's extension; :class:`PredictError` for any other."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise PredictError(f"{path}: unknown file type {Path(path).suffix or '(none)'!r}; expected one of {list(FORMATS)}")
    return kind


def read_rows(path: Path) -> pd.DataFrame:
    """The input rows, every value as written (csv/tsv: strings; an empty cell is an empty string)."""
    path = Path(path)
    kind = table_format(path)
    if not path.is_file():
        raise PredictError(f"{path}: file not found")
    try:
        if kind == "jsonl":
            rows = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
        else:
            rows = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PredictError(f"{path}: not readable as {kind}: {first}") from None
    if rows.empty:
        raise PredictError(f"{path}: no rows")
    return rows


def write_rows(rows: pd.DataFrame, path: Path) -> None:
    """``rows`` in the format of ``path``'s extension."""
    path = Path(path)
    kind = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        rows.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        rows.to_csv(path, sep="\t" if kind == "tsv" else ",", index=False)


# -- which columns the task and the method read -----------------------------------------------------------------
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
        raise PredictError(f"{where}: missing column {missing[0]!r}: the English side is given in {given}, "
                           f"so every one of {sources} is needed (or none: then it is translated)")  # fmt: skip
    for column in targets + given:
        bad = [i for i, value in enumerate(rows[column]) if not isinstance(value, str)]
        if bad:
            value = rows[column].iloc[bad[0]]
            what = "has no value" if value is None or (isinstance(value, float) and value != value) else f"is {value!r}, not a text"
            raise PredictError(f"{where}: column {column!r}: row {bad[0] + 1} (counting from 1) {what}")
    return InputPlan(task, targets, sources, reads_english(experiment.method), sources_given=bool(given))


# -- the adapter in MLflow ------------------------------------------------------------------------------------
@dataclass
class Adapter:
    """A trial's downloaded adapter folder, where it came from, and its trial record."""

    folder: Path
    run_id: str
    record: dict[str, Any]  # trial_config.json: {"experiment": ..., "language": ..., "epoch": ...}
    model_name: str | None = None
    version: str | None = None

    @property
    def language(self) -> str:
        return self.record["language"]

    def describe(self) -> str:
        return f"model {self.model_name} version {self.version}" if self.model_name else f"run {self.run_id}"


def fetch_adapter(tracking_uri: str, reference: str, destination: Path) -> Adapter:
    """Resolve ``reference`` and download its adapter folder (with ``trial_config.json``) into ``destination``."""
    try:
        run_id, folder, name, version = registry.download_adapter(tracking_uri, reference, destination)
    except registry.LookupFailed as err:
        raise PredictError(str(err)) from None
    record_path = folder / TRIAL_CONFIG_NAME
    if not record_path.is_file():
        raise PredictError(f"{reference}: run {run_id} has no {TRIAL_CONFIG_NAME} in its adapter; is it a flare_ray trial?")
    return Adapter(folder, run_id, json.loads(record_path.read_text()), name, version)


# -- the English side, translated ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TranslationSettings:
    """How a missing English side is made: NLLB-200 (greedy) from the target language into English."""

    model: str = DEFAULT_MODEL
    max_length: int = 512
    batch_size: int = 16
    dtype: str = "auto"
    cache_dir: Path = Path("outputs/translations")
    origin: str = "default"  # where the model and decoding settings come from


def translation_settings(experiment: ExperimentConfig, language: str, *, model: str | None = None,
                         max_length: int | None = None, batch_size: int | None = None,
                         cache_dir: Path | None = None) -> TranslationSettings:  # fmt: skip
    """The run's own: where its test split was translated (``task.splits.test: mt``), the model and decoding
    settings of that split's provenance, so the new input's English side is made as the test set's was;
    otherwise the translation pipeline's defaults. Explicit values win."""
    found: dict[str, Any] = {}
    spec = experiment.task
    if spec.splits.get("test") == "mt" and spec.mt_dir is not None:
        path = provenance_path(mt_split_path(spec.mt_dir, spec.name, language, "test"))
        try:
            found = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            found = {}
    decoding, run = found.get("decoding", {}), found.get("run", {})
    chosen = TranslationSettings(
        model=model or found.get("mt_model") or DEFAULT_MODEL,
        max_length=max_length or decoding.get("max_length") or 512,
        batch_size=batch_size or run.get("batch_size") or 16,
        dtype=decoding.get("dtype") or "auto",
        cache_dir=Path(cache_dir or TranslationSettings.cache_dir),
        origin="the run's test split" if found else "default",
    )
    return chosen


@dataclass
class TranslationReport:
    path: Path  # the cache file
    segments: int  # distinct texts of the input
    translated: int  # of them, translated now (the rest came from the cache)


def cache_path(settings: TranslationSettings, src: str, model: str) -> tuple[Path, str, dict[str, Any]]:
    """The cache file of one direction and model/decoding settings, its key and what the key is made of."""
    material = {
        "purpose": "predict", "pipeline_version": PIPELINE_VERSION, "mt_model": model,
        "source_nllb": src, "target_nllb": ENGLISH.code,
        "decoding": {**GREEDY, "max_length": settings.max_length, "dtype": settings.dtype},
    }  # fmt: skip
    key = sha256_json(material)
    return Path(settings.cache_dir).expanduser().resolve() / f"{src}-{ENGLISH.code}-{key[:16]}.parquet", key, material


def english_sources(task: Task, texts: dict[str, list[str]], settings: TranslationSettings
                    ) -> tuple[dict[str, list[str]], TranslationReport]:  # fmt: skip
    """The English side of every text (``{field: [text per row]}``), translated by NLLB-200 from the task's
    language as the translation job does (:func:`~flare_ray.translate.translator.translate_with_ray`: Ray Data,
    greedy, batched). Translations are cached per text in one parquet file per model and decoding settings
    (with a provenance JSON beside it): only texts not in the cache are translated."""
    language = nllb_language(task.language)
    model = resolve_name_or_path(settings.model)
    path, key, material = cache_path(settings, language.code, model)
    cached: dict[str, tuple[str, bool]] = {}
    provenance = cached_provenance(path, key)
    if provenance is not None:
        table = pd.read_parquet(path)
        cached = dict(zip(table["text"], zip(table["translation"], table["truncated"].astype(bool))))
    wanted = list(dict.fromkeys(t for column in texts.values() for t in column))
    todo = [t for t in wanted if t not in cached]
    if todo:
        config = TranslateConfig(task=TaskConfig(name=task.name, language=task.language), mt_dir=path.parent,
                                 model=model, max_length=settings.max_length, batch_size=settings.batch_size,
                                 dtype=settings.dtype)  # fmt: skip
        started = time.perf_counter()
        translations, run = translate_with_ray([Segment(language.code, ENGLISH.code, t) for t in todo], config)
        cached.update({t: (tr.text, tr.truncated) for t, tr in zip(todo, translations)})
        entries = sorted(cached.items())
        records = datasets.Dataset.from_dict({
            "text": [t for t, _ in entries], "translation": [tr for _, (tr, _) in entries],
            "truncated": [bool(cut) for _, (_, cut) in entries],
        })  # fmt: skip
        write_split(records, {
            **material, "cache_key": key, "task": task.name, "language": task.language,
            "language_fallback": language.fallback, "segments": len(entries), "run": run,
            "last_added": len(todo), "seconds": round(time.perf_counter() - started, 3),
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }, path)  # fmt: skip
    english = {f: [cached[t][0] for t in column] for f, column in texts.items()}
    return english, TranslationReport(path, len(wanted), len(todo))


# -- predicting ----------------------------------------------------------------------------------------------------
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


def predict(experiment: ExperimentConfig, language: str, folder: Path, rows: pd.DataFrame, *,
            translation: TranslationSettings | None = None, where: Path | str = "input") -> Prediction:  # fmt: skip
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
    predictions = _predict(run.encoder, run.model, records, experiment.training)
    assert len(predictions) == len(rows), (len(predictions), len(rows))
    return Prediction(predictions, report, english)

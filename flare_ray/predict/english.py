"""The English side of new target-language text, where the input has none: NLLB-200 from the task's language
into English, as the translation job translates (Ray Data, greedy), cached per text."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import datasets
import pandas as pd

from flare_ray.languages import ENGLISH, nllb_language
from flare_ray.models.loading import resolve_name_or_path
from flare_ray.tasks import Task, TaskConfig
from flare_ray.tasks.base import mt_split_path, provenance_path
from flare_ray.translate.config import DEFAULT_MODEL, TranslateConfig
from flare_ray.translate.pipeline import PIPELINE_VERSION
from flare_ray.translate.store import cached_provenance, sha256_json, write_split
from flare_ray.translate.translator import GREEDY, Segment, translate_with_ray

if TYPE_CHECKING:
    from flare_ray.experiment import ExperimentConfig


@dataclass(frozen=True)
class TranslationSettings:
    """How a missing English side is made: NLLB-200 (greedy) from the target language into English."""

    model: str = DEFAULT_MODEL
    max_length: int = 512
    batch_size: int = 16
    dtype: str = "auto"
    cache_dir: Path = Path("outputs/translations")
    origin: str = "default"  # where the model and decoding settings come from


def translation_settings(
    experiment: ExperimentConfig,
    language: str,
    *,
    model: str | None = None,
    max_length: int | None = None,
    batch_size: int | None = None,
    cache_dir: Path | None = None,
) -> TranslationSettings:
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
        "purpose": "predict",
        "pipeline_version": PIPELINE_VERSION,
        "mt_model": model,
        "source_nllb": src,
        "target_nllb": ENGLISH.code,
        "decoding": {**GREEDY, "max_length": settings.max_length, "dtype": settings.dtype},
    }
    key = sha256_json(material)
    return Path(settings.cache_dir).expanduser().resolve() / f"{src}-{ENGLISH.code}-{key[:16]}.parquet", key, material


def english_sources(
    task: Task, texts: dict[str, list[str]], settings: TranslationSettings
) -> tuple[dict[str, list[str]], TranslationReport]:
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
        config = TranslateConfig(
            task=TaskConfig(name=task.name, language=task.language),
            mt_dir=path.parent,
            model=model,
            max_length=settings.max_length,
            batch_size=settings.batch_size,
            dtype=settings.dtype,
        )
        started = time.perf_counter()
        translations, run = translate_with_ray([Segment(language.code, ENGLISH.code, t) for t in todo], config)
        cached.update({t: (tr.text, tr.truncated) for t, tr in zip(todo, translations)})
        entries = sorted(cached.items())
        records = datasets.Dataset.from_dict(
            {
                "text": [t for t, _ in entries],
                "translation": [tr for _, (tr, _) in entries],
                "truncated": [bool(cut) for _, (_, cut) in entries],
            }
        )
        write_split(
            records,
            {
                **material,
                "cache_key": key,
                "task": task.name,
                "language": task.language,
                "language_fallback": language.fallback,
                "segments": len(entries),
                "run": run,
                "last_added": len(todo),
                "seconds": round(time.perf_counter() - started, 3),
                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
            path,
        )
    english = {f: [cached[t][0] for t in column] for f, column in texts.items()}
    return english, TranslationReport(path, len(wanted), len(todo))

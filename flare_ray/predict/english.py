"""The English side of new target-language text, where the input has none: NLLB-200 from the task's language
into English, as the translation job translates (Ray Data, greedy), cached per text."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets
import pandas as pd

from flare_ray.languages import ENGLISH, nllb_language
from flare_ray.logs import native_output_to_log, quiet_libraries
from flare_ray.models.loading import resolve_name_or_path
from flare_ray.tasks import Task, TaskConfig
from flare_ray.translate.config import TranslateConfig
from flare_ray.translate.pipeline import PIPELINE_VERSION
from flare_ray.translate.store import cached_provenance, sha256_json, write_split
from flare_ray.translate.translator import GREEDY, Segment, translate_with_ray

from .inputs import TranslationSettings, translation_settings

__all__ = ["TranslationReport", "TranslationSettings", "cache_path", "english_sources", "translation_settings"]


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
    task: Task, texts: dict[str, list[str]], settings: TranslationSettings, *, verbose: bool = True
) -> tuple[dict[str, list[str]], TranslationReport]:
    """The English side of every text (``{field: [text per row]}``), translated by NLLB-200 from the task's
    language as the translation job does (:func:`~flare_ray.translate.translator.translate_with_ray`: Ray Data,
    greedy, batched). Translations are cached per text in one parquet file per model and decoding settings
    (with a provenance JSON beside it): only texts not in the cache are translated. Not ``verbose``: a Ray this
    call starts keeps its workers' output off the console (in Ray's logs), Ray Data shows no progress bars, and
    what the driver's native code writes to stderr goes to the log file of :func:`flare_ray.logs.log_to_file`."""
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
        where = None if verbose else _quiet_ray()
        started = time.perf_counter()
        with contextlib.nullcontext() if verbose else native_output_to_log():
            translations, run = translate_with_ray([Segment(language.code, ENGLISH.code, t) for t in todo], config)
        if where is not None:
            run["ray"] = where
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


def _quiet_ray() -> str | None:
    """Ray Data without progress bars and, where Ray is not running yet, a Ray started (as the translation job
    connects, :func:`~flare_ray.translate.translator.connect_ray`) without its workers' output on the console;
    which Ray that is (None: one this process had already)."""
    import ray
    from ray.data import DataContext

    from flare_ray.local_ray import init_ray

    quiet_libraries()  # Ray Data sets up its loggers' handlers when imported
    DataContext.get_current().enable_progress_bars = False
    if ray.is_initialized():
        return None
    started = init_ray(log_to_driver=False, configure_logging=False)
    quiet_libraries()
    address = os.environ.get("RAY_ADDRESS")  # named as connect_ray names it
    if started:
        return "local Ray"
    return f"Ray cluster at {address}" if address else "the Ray cluster started on this machine (ray start)"

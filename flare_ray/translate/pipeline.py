"""The translation pipeline: validate, reuse what is cached, translate the rest, write splits with provenance.

Everything that can be wrong with the input (the configuration, the data files,
labels, answers) surfaces in :func:`prepare`, before any model is loaded. All
roles that need translating go through one Ray Data job, so each actor loads the
model once for the whole run.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

from flare_ray.languages import NllbLanguage, nllb_language
from flare_ray.tasks import ROLES, Task, get_task
from flare_ray.tasks.base import mt_split_path

from .config import TranslateConfig
from .records import Outcome, RolePlan, assemble, back_segments, plan_role, with_back_translation
from .store import cached_provenance, files_sha256, records_sha256, sha256_json, write_split
from .translator import GREEDY, Segment, Translation, translate_with_ray

logger = logging.getLogger("flare_ray.translate")

#: Bump when the processing changes what a translated split contains (invalidates every cache entry).
#: 2: QA test contexts are translated without answer markers (empty source_answers).
#: 3: QA test contexts carry answer markers, as the authors' (source_answers projected; markers_lost listed).
PIPELINE_VERSION = 3

Translate = Callable[[list[Segment], TranslateConfig], tuple[list[Translation], dict[str, Any]]]


@dataclass
class RoleJob:
    """One role: its plan, where it goes, and the cache key of its inputs and settings."""

    plan: RolePlan
    path: Path
    key_material: dict[str, Any]

    @property
    def cache_key(self) -> str:
        return sha256_json(self.key_material)

    @property
    def serving_keys(self) -> list[str]:
        """Cache keys of splits that serve this job: its own, and for a train split without back-translation
        also the same split with it (its columns are a superset)."""
        if self.plan.role != "train" or self.key_material["back_translation"]:
            return [self.cache_key]
        return [self.cache_key, sha256_json({**self.key_material, "back_translation": True})]


@dataclass
class RoleResult:
    role: str
    path: Path
    cached: bool
    provenance: dict[str, Any]


def _versions() -> dict[str, str]:
    out = {}
    for package in ("flare_ray", "transformers", "torch", "ray", "datasets", "tokenizers"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def prepare(config: TranslateConfig) -> tuple[Task, NllbLanguage, list[RoleJob]]:
    """Load and check every role's records and plan its segments (raises TaskDataError; loads no model)."""
    task = get_task(config.task_config())
    language = nllb_language(task.language)
    if language.fallback:
        logger.warning("%s/%s: %s (NLLB code %s)", task.name, task.language, language.fallback, language.code)
    jobs = []
    for role in config.roles:
        records = task.load(role)
        plan = plan_role(task, role, records, language, config.answer_markers())
        key_material = {
            "pipeline_version": PIPELINE_VERSION,
            "task": task.name,
            "language": task.language,
            "role": role,
            "recipe": task.provenance()[role]["recipe"],
            "mt_model": config.model,
            "source_nllb": plan.direction.src.code,
            "target_nllb": plan.direction.tgt.code,
            "decoding": {**GREEDY, "max_length": config.max_length, "dtype": config.dtype},
            "markers": list(config.markers) if plan.marked else None,
            "input_records_sha256": records_sha256(records),
            "back_translation": config.back_translate and role == "train",
        }
        jobs.append(RoleJob(plan, mt_split_path(config.mt_dir, task.name, task.language, role), key_material))
    return task, language, jobs


def _task_input(task: Task, role: str) -> dict[str, Any]:
    """The task's own provenance of a role's input records (data source, recipe), and any row limit."""
    described = task.provenance()
    general = {key: value for key, value in described.items() if key not in ROLES}
    return {**general, **described[role], "max_records": task.config.max_records.get(role)}


def _provenance(
    job: RoleJob, task: Task, outcome: Outcome, run: dict[str, Any], data_files: dict[str, str] | None
) -> dict[str, Any]:
    """Everything about how a translated split was made (written beside it as JSON)."""
    plan, material = job.plan, job.key_material
    return {
        "task": task.name,
        "language": task.language,
        "role": plan.role,
        "input": _task_input(task, plan.role),
        "translated": f"{plan.direction.read}_* -> {plan.direction.write}_*",
        "fields": list(plan.fields) + (["answers"] if plan.qa else []),
        "mt_model": material["mt_model"],
        "source_language": plan.direction.src.describe(),
        "target_language": plan.direction.tgt.describe(),
        "language_fallback": plan.direction.src.fallback or plan.direction.tgt.fallback,
        "decoding": material["decoding"],
        "answer_markers": material["markers"],
        "answers_projected": plan.marked if plan.qa else None,  # False: a split of pipeline version 2's test
        "records_in": len(plan.records),
        "records_out": len(outcome.records),
        "dropped": outcome.dropped,
        "markers_lost": outcome.markers_lost if plan.keeps_unmarked and plan.qa else None,  # test: kept, no answer
        "truncated_inputs": outcome.truncated,
        "contexts_with_marker_characters_replaced": plan.scrubbed if plan.marked else None,
        "input_records_sha256": material["input_records_sha256"],
        "data_files_sha256": data_files,
        "run": run,
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "cache_key": job.cache_key,
    }


def _back_translate(
    task: Task, language: NllbLanguage, train: Outcome | None, config: TranslateConfig, translate: Translate | None
) -> dict[str, Any]:
    """The assembled training records translated back into English (X-Mixup's scheduled source), after the
    forward translation they read."""
    if train is None or train.records is None or len(train.records) == 0:
        return {}
    segments = back_segments(task, train.records, language)
    unique = list(dict.fromkeys(s for record in segments for s in record))
    logger.info("train: %d records back into English (%s -> %s) for X-Mixup", len(segments), language.code, "eng_Latn")
    start = time.perf_counter()
    translations, run_info = (translate or translate_with_ray)(unique, config)
    records = with_back_translation(task, train.records, segments, dict(zip(unique, translations)))
    run_info = {
        **run_info,
        "segments": len(unique),
        "total_seconds": round(time.perf_counter() - start, 3),
        "columns": [f"back_translation_{f}" for f in task.text_fields],
    }
    return {"records": records, "run": run_info}


def run(
    config: TranslateConfig, *, force: bool = False, check: bool = False, translate: Translate | None = None
) -> list[RoleResult]:
    """Translate the configured roles (or reuse cached splits); ``check``: validate and report only.

    ``translate`` (default :func:`~.translator.translate_with_ray`) maps segments to translations.
    """
    task, language, jobs = prepare(config)
    results, todo = [], []
    for job in jobs:
        cached = None if force else next(filter(None, (cached_provenance(job.path, k) for k in job.serving_keys)), None)
        if cached is not None:
            logger.info(
                "%s: reusing cached translation %s (same model, languages, decoding settings and inputs; "
                "created %s); the model is not loaded for it",
                job.plan.role,
                job.path,
                cached.get("created"),
            )
            results.append(RoleResult(job.plan.role, job.path, True, cached))
        else:
            todo.append(job)
            logger.info(
                "%s: %d records, %s -> %s, to %s",
                job.plan.role,
                len(job.plan.records),
                job.plan.direction.src.code,
                job.plan.direction.tgt.code,
                job.path,
            )
    if check or not todo:
        if check:
            logger.info("--dry-run: configuration and data are valid; %d role(s) would be translated", len(todo))
        return results

    segments = list(dict.fromkeys(s for job in todo for record in job.plan.segments for s in record))
    start = time.perf_counter()
    translations, run_info = (translate or translate_with_ray)(segments, config)
    run_info = {**run_info, "segments": len(segments), "total_seconds": round(time.perf_counter() - start, 3)}
    by_segment = dict(zip(segments, translations))
    data_files = None if config.task.hub_id else files_sha256(task.data_dir)  # hub: input_records_sha256 only
    markers = config.answer_markers()
    outcomes = {job.plan.role: assemble(job.plan, by_segment, markers) for job in todo}
    back = _back_translate(task, language, outcomes.get("train"), config, translate) if config.back_translate else {}
    for job in todo:
        outcome = outcomes[job.plan.role]
        provenance = _provenance(job, task, outcome, run_info, data_files)
        if job.plan.role == "train" and back:
            outcome.records, provenance["back_translation"] = back["records"], back["run"]
        write_split(outcome.records, provenance, job.path)
        logger.info(
            "%s: wrote %s (%d of %d records; %d dropped, %d inputs truncated)",
            job.plan.role,
            job.path,
            len(outcome.records),
            len(job.plan.records),
            len(outcome.dropped),
            len(outcome.truncated),
        )
        if outcome.markers_lost:
            logger.info(
                "%s: %d of %d records lost their answer markers in translation (kept without English "
                "answers; translate-test leaves them out)",
                job.plan.role,
                len(outcome.markers_lost),
                len(outcome.records),
            )
        if len(outcome.records) == 0:
            logger.warning("%s: every record was dropped (see %s)", job.plan.role, job.path.name)
        results.append(RoleResult(job.plan.role, job.path, False, provenance))
    order = {role: i for i, role in enumerate(config.roles)}
    return sorted(results, key=lambda r: order[r.role])

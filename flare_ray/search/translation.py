"""Translation as a stage of the sweep, like stage 1: the NLLB-200 splits its trials read, made once.

Where ``task.splits`` reads machine translations (``mt``) and ``task.mt_dir`` is not set, the sweep
translates into its storage (``<storage_path>/mt/<task>/<language>/<role>.parquet``) before stage 1 and the
trials, with :func:`flare_ray.translate.pipeline.run` (one Ray Data job per language; each actor loads the
model once): train and validation from English into the language, test from the language into English, and
where X-Mixup runs the translated training set back into English (its scheduled source).
Each split is kept with its provenance and a cache key of everything it depends on (task, language, role,
NLLB model, directions, decoding, the input records, the pipeline's version), so a later sweep with the same
key reuses it and translates nothing; a split whose key changed, or whose parquet no longer matches the digest
written beside it, is made again (with a warning naming the file). A sweep killed while
translating keeps the languages it finished. A ``task.mt_dir`` elsewhere holds translations made elsewhere
(``python -m flare_ray.translate``), read as they are.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from flare_ray.experiment import ExperimentConfig
from flare_ray.tasks import ROLES, TaskConfig
from flare_ray.translate.config import TranslateConfig

log = logging.getLogger(__name__)


def mt_roles(config: ExperimentConfig) -> list[str]:
    """The roles whose split is a machine translation, in role order."""
    return [role for role in ROLES if config.task.splits.get(role) == "mt"]


def runs_xmixup(config: ExperimentConfig) -> bool:
    """Does a trial of the sweep run X-Mixup (whose scheduled source reads the back-translated training set)?"""
    kinds = config.search.cell_values("method.kind") or [config.method.kind]
    return "xmixup" in kinds


def translate_configs(config: ExperimentConfig) -> list[TranslateConfig]:
    """One translation job per target language: its ``mt`` roles from the task's own data, into ``task.mt_dir``;
    with X-Mixup among the methods and a translated training set, that set back into English too."""
    task = config.task.model_dump(exclude={"language", "languages", "splits", "mt_dir"})
    roles = mt_roles(config)
    back = runs_xmixup(config) and "train" in roles
    return [
        TranslateConfig(
            **config.translation.model_dump(),
            task=TaskConfig(**task, language=language),
            mt_dir=config.task.mt_dir,
            roles=roles,
            back_translate=back,
        )
        for language in config.task.languages
    ]


@dataclass
class TranslationStage:
    """What the stage found or made: per (language, role), whether it was reused, and its provenance."""

    model: str
    languages: int
    roles: list[str]
    splits: dict[str, dict[str, Any]]  # "<language>/<role>" -> {"path", "cached", "records", "segments", ...}
    seconds: float = 0.0

    @property
    def cached(self) -> int:
        return sum(s["cached"] for s in self.splits.values())

    @property
    def made(self) -> int:
        return len(self.splits) - self.cached

    def line(self) -> str:
        return (
            f"translation: {self.languages} language(s) x {len(self.roles)} role(s) ({', '.join(self.roles)}), "
            f"{self.model}: cached {self.cached} / made {self.made}"
        )


def plan_line(config: ExperimentConfig) -> str | None:
    """The dry run's and the plan's line: how many splits are already made with this model (their provenance,
    read without loading any data or model: the inputs are checked by their cache key when the sweep runs) and
    how many to make; None where the sweep translates nothing."""
    if not config.translates:
        return None
    import json

    from flare_ray.tasks.base import mt_split_path
    from flare_ray.translate.store import provenance_path, split_problem

    roles, model, made = mt_roles(config), config.translation.model, 0
    for language in config.task.languages:
        for role in roles:
            split = mt_split_path(config.task.mt_dir, config.task.name, language, role)
            try:
                known = json.loads(provenance_path(split).read_text())
            except (OSError, ValueError):
                continue
            made += known.get("mt_model") == model and split_problem(split) is None  # damaged: made again
    total = len(config.task.languages) * len(roles)
    back = ", the training set back into English for X-Mixup" if runs_xmixup(config) and "train" in roles else ""
    return (
        f"translation: {len(config.task.languages)} language(s) x {len(roles)} role(s) ({', '.join(roles)}){back}, "
        f"{model}, into {config.task.mt_dir}: cached {made} / to make {total - made}"
    )


def ensure_translations(config: ExperimentConfig) -> TranslationStage | None:
    """Make (or reuse) every split the sweep's trials read as machine translations; None where there is none
    to make here."""
    if not config.translates:
        return None
    import ray.data  # noqa: F401  (Ray Data installs a console handler of its own when imported: quieted here)

    from flare_ray.logs import quiet_libraries
    from flare_ray.translate import pipeline

    quiet_libraries()
    started, splits = time.perf_counter(), {}
    for job in translate_configs(config):
        for result in pipeline.run(job):
            provenance = result.provenance
            splits[f"{job.task.language}/{result.role}"] = {
                "path": str(result.path),
                "cached": result.cached,
                "records": provenance.get("records_out"),
                "dropped": len(provenance.get("dropped") or []),
                "segments": (provenance.get("run") or {}).get("segments"),
                "created": provenance.get("created"),
                "cache_key": provenance.get("cache_key"),
                "back_translation": bool(provenance.get("back_translation")),
            }
    return TranslationStage(
        config.translation.model,
        len(config.task.languages),
        mt_roles(config),
        splits,
        round(time.perf_counter() - started, 1),
    )

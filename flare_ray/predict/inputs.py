"""What ``predict`` checks before any model loads: the columns the task and the method read, the model that
makes a missing English side, and the models the trial's record names. Light: pandas, the schema and the
task registry (no torch, no transformers), so a bad input is one line within a second."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flare_ray.experiment.checks import hub_offline, preflight_problems
from flare_ray.experiment.training import METHODS
from flare_ray.tasks import Task, get_task
from flare_ray.tasks.base import mt_split_path, provenance_path
from flare_ray.translate.config import DEFAULT_MODEL

from .tables import PredictError

if TYPE_CHECKING:
    from flare_ray.experiment import ExperimentConfig

SCORE_COLUMN = "score"  # extractive QA: the probability of the answer among the context's candidate spans
LABEL_PREFIX = "p_"  # classification: p_<label>, the probability of each label
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # 'name' or 'org/name'
_NAMES = {  # how the messages name a method that reads English
    "flare": "FLARE",
    "xmixup": "X-Mixup",
    "input_fusion": "input-level fusion",
    "translate_test": "translate-test",
}


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


def score_columns(task: type[Task] | Task) -> list[str]:
    """The columns ``--scores`` adds: ``p_<label>`` per label (classification), or ``score`` (extractive QA)."""
    return [f"{LABEL_PREFIX}{label}" for label in task.labels] if task.labels else [SCORE_COLUMN]


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


# -- the English side, where the input has none ----------------------------------------------------------------
@dataclass(frozen=True)
class TranslationSettings:
    """How a missing English side is made: NLLB-200 (greedy) from the target language into English."""

    model: str = DEFAULT_MODEL
    max_length: int = 512
    batch_size: int = 16
    dtype: str = "auto"
    cache_dir: Path = Path("outputs/translations")
    origin: str = "default"  # where the model comes from: "--mt-model", "the run's test split" or "default"


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
    return TranslationSettings(
        model=model or found.get("mt_model") or DEFAULT_MODEL,
        max_length=max_length or decoding.get("max_length") or 512,
        batch_size=batch_size or run.get("batch_size") or 16,
        dtype=decoding.get("dtype") or "auto",
        cache_dir=Path(cache_dir or TranslationSettings.cache_dir),
        origin="--mt-model" if model else "the run's test split" if found.get("mt_model") else "default",
    )


def model_at_hand(name_or_path: str) -> str | None:
    """Why ``name_or_path`` (a model folder, a hub id or ``tiny:<arch>``) cannot be loaded here, or None where
    it can: a folder that exists with a ``config.json``; a hub id in the local Hugging Face cache (its config and
    weights), or, while the hub is online, a hub id the hub has (it is downloaded)."""
    if name_or_path.startswith("tiny:"):
        return None
    local = Path(name_or_path).expanduser()
    if local.is_dir():
        return None if (local / "config.json").is_file() else "a folder without config.json (no model)"
    pathlike = name_or_path.startswith(("/", ".", "~")) or ("\\" in name_or_path) or not _HUB_ID.match(name_or_path)
    if pathlike:
        return "no such folder"
    if _cached(name_or_path):
        return None
    if hub_offline():
        switch = ", ".join(
            f"{name}={os.environ[name]}" for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE") if os.environ.get(name)
        )
        return f"no folder here, and not in the local Hugging Face cache while the hub is offline ({switch})"
    return _on_the_hub(name_or_path)


def _on_the_hub(repo: str) -> str | None:
    """Why the hub model ``repo`` cannot be downloaded now (one request for its ``config.json``'s metadata; a
    hub that cannot be reached answers within seconds, where downloading would retry for minutes), or None."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError, GatedRepoError, RepositoryNotFoundError

    try:
        get_hf_file_metadata(hf_hub_url(repo, "config.json"), timeout=10)
    except GatedRepoError:
        return "no folder here, and gated on the Hugging Face hub: log in (hf auth login) with access to it"
    except (RepositoryNotFoundError, EntryNotFoundError):
        return "no folder here, and no model of that name on the Hugging Face hub"
    except Exception as err:  # noqa: BLE001 - no network, a proxy, a timeout: the HTTP library's many types
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return (
            f"no folder here, not in the local Hugging Face cache, and the hub cannot be reached ({first}); "
            "download it where the hub can be reached, or set HF_HUB_OFFLINE=1 to be told at once"
        )
    return None


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def _cached(repo: str) -> bool:
    """Is the hub model ``repo`` in the local cache: its ``config.json`` and its weights (or their index)?"""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = [isinstance(try_to_load_from_cache(repo, name), str) for name in ("config.json", *_WEIGHTS)]
    except ValueError:  # no repo id after all
        return False
    return found[0] and any(found[1:])


def mt_model_problem(mt_model: str | None) -> None:
    """:class:`PredictError` for a ``--mt-model`` that cannot be loaded here (checked whether or not it is
    needed: a mistyped option is said, not ignored)."""
    problem = model_at_hand(mt_model) if mt_model else None
    if problem is not None:
        raise PredictError(
            f"--mt-model {mt_model}: {problem}; expected an NLLB-200 model folder, a hub id (cached, when offline) "
            "or tiny:m2m_100"
        )


def english_side_problem(plan: InputPlan, experiment: ExperimentConfig, settings: TranslationSettings, where) -> None:
    """:class:`PredictError` where the method reads an English side, the input has none, and the NLLB model
    that would translate it is not at hand (the case of a CSV with only the target text, offline)."""
    if not plan.translate:
        return
    problem = model_at_hand(settings.model)
    if problem is None:
        return
    method = _NAMES.get(experiment.method.kind, experiment.method.kind)
    columns = " and ".join(plan.source_columns)
    chosen = {
        "--mt-model": "--mt-model",
        "the run's test split": "the NLLB model the run's test split was translated with",
        "default": "the default NLLB model",
    }[settings.origin]
    raise PredictError(
        f"{where}: no {columns} column{'s' if len(plan.source_columns) > 1 else ''}: {method} reads the English "
        f"side; add {columns} (the English text), or give --mt-model PATH (an NLLB-200 model to translate the "
        f"text): {chosen}, {settings.model}, is {problem}"
    )


def download_note(plan: InputPlan, settings: TranslationSettings | None) -> str | None:
    """A line for the console where the English side will be translated by a hub model that is not in the local
    cache (the hub is online: it is downloaded first, which for the default NLLB-200 3.3B is many GB)."""
    if not plan.translate or settings is None or settings.model.startswith("tiny:"):
        return None
    if Path(settings.model).expanduser().is_dir() or _cached(settings.model):
        return None
    return (
        f"note: no {' and '.join(plan.source_columns)} column: the English side is translated by {settings.model} "
        "(not in the local Hugging Face cache: it is downloaded first); to avoid that, add the column or give "
        "--mt-model PATH"
    )


def model_problems(experiment: ExperimentConfig, reference: str) -> None:
    """:class:`PredictError` for the first model the trial's record names that cannot be loaded here (its base
    model, its stage-1 folder, FLARE-MT's MT encoder), as ``tune`` checks them before Ray starts
    (:func:`~flare_ray.experiment.checks.preflight_problems`; its checks of the training data are not ours),
    and where the hub is online, a hub model that is not cached must be on a hub that answers
    (:func:`model_at_hand`)."""
    mt = ("method", "flare", "mt_encoder")
    for problem in preflight_problems(experiment):
        if problem.path[:1] == ("model",) or problem.path[:3] == mt:
            key = ".".join(str(part) for part in problem.path)
            raise PredictError(f"{reference}: its trial record's {key}: {problem.message}")
    named = [("model.name_or_path", experiment.model.name_or_path)]
    if experiment.method.kind == "flare_mt" and experiment.method.flare.mt_encoder:
        named.append(("method.flare.mt_encoder", experiment.method.flare.mt_encoder))
    for key, value in named:  # online: the hub answers (else loading it would retry for minutes)
        problem = model_at_hand(value)
        if problem is not None:
            raise PredictError(f"{reference}: its trial record's {key}: {value}: {problem}")


def scores_problem(plan: InputPlan, rows: pd.DataFrame, where) -> None:
    """:class:`PredictError` where a column ``--scores`` adds is in the input already."""
    for column in score_columns(plan.task):
        if column in rows.columns:
            raise PredictError(f"{where}: column {column!r} exists; --scores adds it")

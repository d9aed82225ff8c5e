"""What the schema cannot see but can be checked before Ray starts: what a config names outside itself.

* ``model.name_or_path`` (and FLARE-MT's ``method.flare.mt_encoder``, and the translation stage's
  ``translation.model`` where the sweep translates): a local folder must exist; a hub id
  (``name`` or ``org/name``) that is no local folder must be in the local Hugging Face cache when the hub is
  offline (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``); online it is accepted. ``tiny:<arch>`` needs
  nothing. Every value the search space, grid or ablation gives the key is checked too.
* no value holds a URI with a password (:mod:`flare_ray.secrets`; credentials come from the environment).
* ``model.stage1``: a folder that exists and holds the stage-1 adapter (``adapter_config.json`` and
  ``adapter_model.safetensors``: a pickled ``adapter_model.bin`` is never loaded), its files intact: as its
  ``sha256.json`` lists them, or without one, parsing (:func:`stage1_folder_problem`).
* ``task``: the files every split reads from the task's local data (``task.data_dir``, else the vendored
  copy; none with a ``hub_id``; for an ``mt`` split, the rows the sweep translates, where it does), for every
  target language: there, with their columns and labels (:meth:`flare_ray.tasks.Task.check_data`); a translated
  split in a ``task.mt_dir`` the config names, where a digest is written beside it, matching it.
* ``method.flare.fusion_layers`` (the config's and every value of the space and grid): no block beyond the
  model's, whose number is read from its ``config.json`` alone (no weights, no transformers; the tiny models'
  from :data:`flare_ray.models.tiny.LAYERS`). Skipped where no ``config.json`` is at hand (a hub id online
  and not cached).
* ``training.max_length`` (every value): no more tokens than the model reads, read from its ``config.json``
  the same way (:func:`flare_ray.models.positions.max_input_positions`). Input-level fusion's joined input
  fits by construction: its two sides split what the model reads (:class:`flare_ray.tasks.encoding.TaskEncoder`).

:func:`preflight_problems` is called once, by :func:`~flare_ray.experiment.loading.validate_experiment`
(``load_experiment``, so the dry run and the real run alike), after the schema and the search space.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Iterator

from flare_ray.configfile import KeyPath, Problem
from flare_ray.digests import SUFFIX, file_problem, folder_problem, has_manifest
from flare_ray.fusion.config import LAYER_GROUPS, resolve_layers
from flare_ray.models.positions import max_input_positions
from flare_ray.models.tiny import LAYERS as TINY_LAYERS
from flare_ray.models.tiny import POSITIONS as TINY_POSITIONS
from flare_ray.secrets import has_password, redact
from flare_ray.tasks import ROLES, TASKS, TaskDataError
from flare_ray.tasks.base import mt_split_path

from .config import ExperimentConfig

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")  # 'name' or 'org/name'
_TRUE = {"1", "ON", "YES", "TRUE"}  # as huggingface_hub reads its switches
_FLARE = ("flare", "flare_mt")
# Where a config.json keeps the number of blocks of the stack FLARE fuses (the encoder's for encoder-decoders).
_LAYER_KEYS = ("num_hidden_layers", "num_layers", "n_layer", "encoder_layers")


def preflight_problems(config: ExperimentConfig) -> list[Problem]:
    """Everything wrong with what ``config`` names on disk or in the hub cache (empty: nothing found)."""
    kinds = {value for _, value in _values(config, "method.kind")}
    problems = [
        p
        for path, value in _values(config, "model.name_or_path")
        if (p := _model_problem(path, value, "a model folder")) is not None
    ]
    if "flare_mt" in kinds:
        problems += [
            p
            for path, value in _values(config, "method.flare.mt_encoder")
            if value
            if (p := _model_problem(path, value, "an MT model folder")) is not None
        ]
    if config.translates:  # the sweep's translation stage loads it
        problems += [
            p
            for p in [_model_problem(("translation", "model"), config.translation.model, "an NLLB-200 model folder")]
            if p is not None
        ]
    problems += _stage1_problems(config)
    problems += _task_data_problems(config)
    problems += _translation_problems(config)
    problems += _credential_problems(config)
    if kinds & set(_FLARE):
        problems += _fusion_layer_problems(config)
    problems += _length_problems(config)
    return problems


def hub_offline() -> bool:
    """Is the Hugging Face hub switched off (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)?"""
    return any(os.environ.get(name, "").strip().upper() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def num_layers(name_or_path: str) -> tuple[int, str] | None:
    """The number of blocks of the model's fused stack, and where it was read; None where no ``config.json``
    is at hand (a hub id not in the local cache) or it does not say."""
    if name_or_path.startswith("tiny:"):
        arch = name_or_path[5:]
        return (TINY_LAYERS[arch], f"the tiny {arch} model") if arch in TINY_LAYERS else None
    found = _config_json(name_or_path)
    if found is None:
        return None
    data, path = found
    for section in (data, data.get("text_config") or {}):
        for key in _LAYER_KEYS:
            if isinstance(section.get(key), int) and not isinstance(section.get(key), bool) and section[key] > 0:
                return section[key], f"{key} in {path}"
    return None


def num_positions(name_or_path: str) -> tuple[int, str] | None:
    """The tokens the model reads in one input, and where it was read; None where nothing bounds them (relative
    positions) or no ``config.json`` is at hand."""
    if name_or_path.startswith("tiny:"):
        arch = name_or_path[5:]
        positions = TINY_POSITIONS.get(arch)
        return (positions, f"the tiny {arch} model") if positions is not None else None
    found = _config_json(name_or_path)
    positions = max_input_positions(found[0]) if found is not None else None
    return (positions, f"max_position_embeddings in {found[1]}") if positions is not None else None


def _config_json(name_or_path: str) -> tuple[dict, Path] | None:
    """A model's ``config.json`` (a local folder's, or a hub id's in the local cache) and its path."""
    local = Path(name_or_path).expanduser()
    if local.exists():
        path = local / "config.json"
    elif _HUB_ID.match(name_or_path):
        path = _cached_config(name_or_path)
    else:
        return None
    if path is None or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return (data, path) if isinstance(data, dict) else None


# -- the checks --------------------------------------------------------------------------------------
def _values(config: ExperimentConfig, key: str) -> Iterator[tuple[KeyPath, Any]]:
    """The config's value of a dotted key, and every value the grid, the space or the ablation gives it, with
    their key paths."""
    value: Any = config
    for part in key.split("."):
        value = getattr(value, part)
    yield tuple(key.split(".")), value
    if key in config.search.grid:
        for i, v in enumerate(config.search.grid[key]):
            yield ("search", "grid", key, i), v
    dist = config.search.space.get(key)
    for i, v in enumerate(getattr(dist, "values", None) or []):  # categorical choices (ranges are numbers)
        yield ("search", "space", key, "values", i), v
    ablation = config.search.ablation
    if ablation is not None and key in ablation.baseline:
        yield ("search", "ablation", "baseline", key), ablation.baseline[key]
    for i, v in enumerate(ablation.vary.get(key, []) if ablation is not None else []):
        yield ("search", "ablation", "vary", key, i), v


def _model_problem(path: KeyPath, value: Any, what: str) -> Problem | None:
    if not isinstance(value, str) or value.startswith("tiny:"):
        return None  # the schema checks the type and the tiny architectures
    if Path(value).expanduser().exists():
        return None
    pathlike = value.startswith(("/", ".", "~")) or ((os.sep in value or "\\" in value) and not _HUB_ID.match(value))
    if pathlike or not _HUB_ID.match(value):
        where = "" if Path(value).expanduser().is_absolute() else f" (relative to {Path.cwd()})"
        return Problem(
            path, f"{value!r} does not exist{where}; expected {what}, a Hugging Face hub id ('org/name') or tiny:<arch>"
        )
    if hub_offline() and _cached_config(value) is None:
        return Problem(
            path,
            f"hub model {value!r} is not in the local Hugging Face cache and the hub is offline "
            f"({_offline_switch()}); expected a cached model: download it first "
            f"(`hf download {value}`), name a local folder, or go online",
        )
    return None


def _length_problems(config: ExperimentConfig) -> list[Problem]:
    """``training.max_length`` (the config's, the grid's, the space's choices and upper bound) longer than a
    model of ``model.name_or_path`` reads."""
    lengths = list(_values(config, "training.max_length"))
    high = getattr(config.search.space.get("training.max_length"), "high", None)
    if high is not None:
        lengths.append((("search", "space", "training.max_length", "high"), high))
    problems = []
    for _, model in _values(config, "model.name_or_path"):
        found = num_positions(model) if isinstance(model, str) else None
        if found is None:
            continue
        positions, where = found
        problems += [
            Problem(
                path,
                f"{length} tokens is more than {model} reads ({positions} positions, {where}); "
                f"expected at most {positions}",
            )
            for path, length in lengths
            if isinstance(length, int) and length > positions
        ]
    return problems


def _credential_problems(config: ExperimentConfig) -> list[Problem]:
    """A URI with a password anywhere in the config (storage_path, tracking.tracking_uri, a model, a grid or
    space value): the config is logged to MLflow and copied into every checkpoint."""

    def walk(value: Any, path: KeyPath) -> Iterator[Problem]:
        if isinstance(value, dict):
            for key, item in value.items():
                yield from walk(item, (*path, key))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                yield from walk(item, (*path, i))
        elif isinstance(value, str) and has_password(value):
            yield Problem(
                path,
                f"{redact(value)!r} holds a password; credentials never go in a config (it is "
                "logged to MLflow and kept in every checkpoint): give them through the "
                "environment (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD, the node's "
                "cloud identity or AWS_* for s3://; cluster/README.md)",
            )

    return list(walk(config.model_dump(mode="json"), ()))


def _stage1_problems(config: ExperimentConfig) -> list[Problem]:
    folder = config.model.stage1
    if not isinstance(folder, Path):  # 'auto' or null
        return []
    path = ("model", "stage1")
    if not folder.is_dir():
        return [
            Problem(
                path,
                f"{str(folder)!r} is no folder (it does not exist); expected a stage-1 adapter "
                "folder (written by `python -m flare_ray.stage1`), 'auto' or null",
            )
        ]
    if not (folder / "adapter_config.json").is_file():
        return [
            Problem(
                path,
                f"{str(folder)!r} holds no stage-1 adapter; expected a folder with adapter_config.json "
                "(written by `python -m flare_ray.stage1`), 'auto' or null",
            )
        ]
    if not (folder / "adapter_model.safetensors").is_file():  # only safetensors are loaded (training.setup)
        bin_only = (folder / "adapter_model.bin").is_file()
        pickled = " (only adapter_model.bin, a pickle, which is never loaded: convert it)" if bin_only else ""
        return [
            Problem(
                path,
                f"{str(folder)!r} holds no adapter_model.safetensors{pickled}; expected a stage-1 adapter folder "
                "with adapter_config.json and adapter_model.safetensors (written by `python -m flare_ray.stage1`), "
                "'auto' or null",
            )
        ]
    problem = stage1_folder_problem(folder)
    if problem is not None:
        return [
            Problem(
                path,
                f"{str(folder)!r} is damaged: {problem}; expected the files as stage 1 wrote them: write the "
                "folder again (`python -m flare_ray.stage1`), or use model.stage1: auto",
            )
        ]
    return []


def stage1_folder_problem(folder: Path) -> str | None:
    """What is wrong with the files of a stage-1 adapter folder, naming the file (None: nothing found). Against
    its ``sha256.json`` where it has one (flare_ray writes it with the folder); a folder without one (made by
    hand, by peft, or by an earlier flare_ray) is checked as far as that can be done without it: its
    ``adapter_config.json`` parses, and each safetensors file's header parses and covers the file (a truncated
    file fails there, not in every trial)."""
    folder = Path(folder)
    if has_manifest(folder):
        return folder_problem(folder)
    config = folder / "adapter_config.json"
    try:
        json.loads(config.read_text())
    except (OSError, ValueError) as err:
        return f"{config} is unreadable ({type(err).__name__}: {err})"
    for path in sorted(folder.rglob("*.safetensors")):
        problem = safetensors_problem(path)
        if problem is not None:
            return problem
    return None


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is no readable safetensors file (None: its header parses and its tensors cover the file).
    Reads the header only: no torch, nothing loaded."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            return None
    except (SafetensorError, OSError) as err:
        return f"{path} is no readable safetensors file ({err}): truncated or corrupted"


def _task_data_problems(config: ExperimentConfig) -> list[Problem]:
    """The task's local files (``task.data_dir``, else the vendored copy) for every target language: each
    split a trial (or the sweep's translation stage) reads from them must be there, with its columns and labels
    (:meth:`~flare_ray.tasks.Task.check_data`)."""
    task = config.task
    if task.data_dir is not None and not task.data_dir.is_dir():
        made_elsewhere = not config.translates and all(task.splits.get(role) == "mt" for role in ROLES)
        if task.hub_id is None and not made_elsewhere:
            return [
                Problem(
                    ("task", "data_dir"),
                    f"{str(task.data_dir)!r} is no folder (it does not exist); expected a local copy of the "
                    f"{task.name} data, or no data_dir for the vendored copy",
                )
            ]
    problems: list[Problem] = []
    for i, language in enumerate(task.languages):
        try:
            TASKS[task.name](task.task_config(language)).check_data(translated_here=config.translates)
        except TaskDataError as err:
            path = ("task", "data_dir") if task.data_dir is not None else ("task", "languages", i)
            if all(str(err) not in p.message for p in problems):  # a file the languages share: once
                problems.append(Problem(path, str(err)))
    return problems


def _translation_problems(config: ExperimentConfig) -> list[Problem]:
    """A translated split in a ``task.mt_dir`` the config names (made elsewhere: the sweep does not make it
    again) whose parquet no longer matches the digest written beside it. A split without one (shipped with the
    data, or made by an earlier version) is read as it is; where the sweep translates, it makes a damaged split
    again (:mod:`flare_ray.translate.store`)."""
    task = config.task
    roles = [role for role in ROLES if task.splits.get(role) == "mt"]
    if config.translates or task.mt_dir is None or not roles:
        return []
    problems = []
    for language in task.languages:
        for role in roles:
            split = mt_split_path(task.mt_dir, task.name, language, role)
            if split.with_name(split.name + SUFFIX).is_file() and (problem := file_problem(split)) is not None:
                problems.append(
                    Problem(
                        ("task", "mt_dir"),
                        f"{problem}; expected the {role} split of {language} as it was translated: translate it "
                        "again (`python -m flare_ray.translate`) or remove task.mt_dir for the sweep to translate",
                    )
                )
    return problems


def _fusion_layer_problems(config: ExperimentConfig) -> list[Problem]:
    models = {value for _, value in _values(config, "model.name_or_path") if isinstance(value, str)}
    counts = {model: found for model in models if (found := num_layers(model)) is not None}
    problems = []
    for path, spec in _values(config, "method.flare.fusion_layers"):
        for model, (n, source) in counts.items():
            try:
                resolve_layers(spec, num_layers=n)
            except ValueError as err:
                reason = str(err).removeprefix("fusion_layers: ").replace("this model", model)
                problems.append(
                    Problem(
                        path,
                        f"{spec!r}: {reason} ({source}); expected block indices 0 to {n - 1} "
                        f"(negative ones count from the last), ranges of them such as "
                        f"'0-{n - 1}', or one of {list(LAYER_GROUPS)}",
                    )
                )
                break  # one problem per value
    return problems


# -- the Hugging Face cache --------------------------------------------------------------------------
def _cached_config(repo: str) -> Path | None:
    """The cached ``config.json`` of a hub model; None if it is not in the local cache."""
    from huggingface_hub import try_to_load_from_cache  # light, and only where a hub id is named

    try:
        found = try_to_load_from_cache(repo, "config.json")
    except ValueError:  # not a repo id after all
        return None
    return Path(found) if isinstance(found, str) else None


def _offline_switch() -> str:
    return ", ".join(
        f"{name}={os.environ[name]}"
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
        if os.environ.get(name, "").strip().upper() in _TRUE
    )

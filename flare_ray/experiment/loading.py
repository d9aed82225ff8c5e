"""Reading an experiment YAML: syntax, ``--set`` overrides, the schema, the search space, then what the config
names outside itself (:mod:`~flare_ray.experiment.checks`: model folders, the hub cache, the model's layers).

Everything is checked before Ray starts; the first failing stage raises one
:class:`~flare_ray.experiment.errors.ExperimentConfigError` naming the file
(and line), the key path and what was expected. YAML is read by
:mod:`flare_ray.configfile` (YAML 1.2 numbers and booleans).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from pydantic import ValidationError

from flare_ray.configfile import Problem, YAMLSyntaxError, parse_value, parse_yaml, read_config_text, set_path

from .checks import preflight_problems
from .config import ExperimentConfig
from .errors import ExperimentConfigError, problems_of
from .space import search_space_problems

Lines = dict[tuple[str | int, ...], int]


def parse_override(override: str) -> tuple[str, Any]:
    """``"training.epochs=3"`` -> ``("training.epochs", 3)``; the value is read as YAML."""
    text = override.removeprefix("--set").strip()
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ValueError("expected key.path=value, e.g. training.epochs=3")
    return key, parse_value(value)


def _override_parts(data: dict[str, Any], key: str) -> tuple[str, ...]:
    """Split an override's key; under ``search.space``, ``search.grid`` and ``search.ablation.baseline`` /
    ``.vary`` the rest names a key path (it has dots itself)."""
    parts = tuple(key.split("."))
    ablation = parts[1:3] in (("ablation", "baseline"), ("ablation", "vary"))
    if parts[:1] != ("search",) or len(parts) <= 2 + ablation or not (ablation or parts[1] in ("space", "grid")):
        return parts
    section, rest = parts[1 : 2 + ablation], parts[2 + ablation :]
    space: Any = data.get("search") or {}
    for part in section:
        space = (space.get(part) if isinstance(space, dict) else None) or {}
    for n in range(len(rest), 0, -1):  # the longest existing key that starts the rest
        if ".".join(rest[:n]) in space:
            return ("search", *section, ".".join(rest[:n])) + rest[n:]
    return ("search", *section, ".".join(rest))


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str) -> dict[tuple, str]:
    """Apply ``key.path=value`` overrides to the raw YAML data in place.

    Returns key path -> the override that set it (to name it in later errors).
    """
    origins: dict[tuple, str] = {}
    for override in overrides:
        label = _label(override)
        try:
            key, value = parse_override(override)
            parts = _override_parts(data, key)
            set_path(data, parts, value)
        except ValueError as err:
            raise ExperimentConfigError(source, [Problem((), f"bad override: {err}", origin=label)]) from None
        origins[parts] = label
    return origins


def _label(override: str) -> str:
    """How an override is named in errors: ``--set key.path=value``, a long value cut short."""
    label = f"--set {override.removeprefix('--set').strip()}"
    return label if len(label) <= 100 else f"{label[:97]}..."


def _attribute(problems: list[Problem], origins: dict[tuple, str]) -> list[Problem]:
    """Mark the problems whose key path an override set (or lies inside, or contains)."""
    for p in problems:
        for parts, label in origins.items():
            n = min(len(parts), len(p.path))
            if tuple(str(x) for x in p.path[:n]) == tuple(parts[:n]):
                p.origin = label
    return problems


def _not_a_mapping(data: Any) -> Problem:
    return Problem((), f"expected a mapping of sections (name, model, task, ...); got {type(data).__name__}")


def validate_experiment(
    data: Any, source: str = "<dict>", lines: Lines | None = None, origins: dict[tuple, str] | None = None
) -> ExperimentConfig:
    """Validate raw (YAML-shaped) data: the schema, then the search space against it, then what it names on
    disk or in the hub cache (:func:`~flare_ray.experiment.checks.preflight_problems`)."""
    lines, origins = lines or {}, origins or {}
    if not isinstance(data, dict):
        raise ExperimentConfigError(source, [_not_a_mapping(data)])
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ExperimentConfigError(source, _attribute(problems_of(err), origins), lines) from None
    problems = search_space_problems(config) or preflight_problems(config)
    if problems:
        raise ExperimentConfigError(source, _attribute(problems, origins), lines)
    config._source = source
    return config


def load_experiment(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read, override (``["training.epochs=3", ...]``; a leading ``--set`` is allowed) and validate a YAML file.

    Raises :class:`ExperimentConfigError` (a ``ValueError``) with one readable
    message naming the file, the key path (and line) and what was expected; also for a file or ``--set``
    value over the limits of :mod:`flare_ray.configfile` (size, nesting, aliases) or not UTF-8.
    """
    source = str(path)
    try:
        data, lines, duplicates = parse_yaml(read_config_text(path), source)
    except OSError as err:
        summary = f"{source}: cannot read the experiment config: {err.strerror or err}"
        raise ExperimentConfigError(source, [], summary=summary) from None
    except YAMLSyntaxError as err:
        raise ExperimentConfigError(source, [], summary=str(err)) from None
    if duplicates:
        problems = [Problem(path, f"duplicate key (first at line {first}); keep one") for path, first in duplicates]
        raise ExperimentConfigError(source, problems, lines)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ExperimentConfigError(source, [_not_a_mapping(data)], lines)
    origins = apply_overrides(data, list(overrides), source)
    return validate_experiment(data, source, lines, origins)

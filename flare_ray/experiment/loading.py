"""Reading an experiment YAML: syntax, ``--set`` overrides, the schema, then the search space.

Everything is checked before Ray starts; the first failing stage raises one
:class:`~flare_ray.experiment.errors.ExperimentConfigError` naming the file
(and line), the key path and what was expected. Numbers and booleans are read
as YAML 1.2 reads them: ``2e-4`` is a float, and ``no``/``on`` stay strings (as
language codes may be).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

import yaml
from pydantic import ValidationError

from .config import ExperimentConfig
from .errors import ExperimentConfigError, Problem, problems_of
from .space import search_space_problems, set_path


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``1e-4``) and booleans (``true``/``false`` only)."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

Lines = dict[tuple[str | int, ...], int]


def parse_yaml(text: str, source: str) -> tuple[Any, Lines]:
    """The YAML document and the line (1-based) of every key path in it.

    Syntax errors and duplicate keys raise :class:`ExperimentConfigError` naming
    ``source`` and the line.
    """
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source
        problem = " ".join(str(p) for p in (err.context, err.problem) if p)
        raise ExperimentConfigError(source, [], summary=f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as err:
        raise ExperimentConfigError(source, [], summary=f"{source}: YAML error: {err}") from None
    finally:
        loader.dispose()
    lines: Lines = {}
    duplicates: list[Problem] = []
    if node is not None:
        _index(node, (), lines, duplicates)
    if duplicates:
        raise ExperimentConfigError(source, duplicates, lines)
    return data, lines


def _index(node: yaml.Node, path: tuple, lines: Lines, duplicates: list[Problem]) -> None:
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in first:
                duplicates.append(Problem(path + (key,), f"duplicate key (first at line {first[key]}); keep one"))
            first.setdefault(key, line)
            lines[path + (key,)] = line
            _index(value_node, path + (key,), lines, duplicates)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _index(item, path + (i,), lines, duplicates)


def parse_override(override: str) -> tuple[str, Any]:
    """``"training.epochs=3"`` -> ``("training.epochs", 3)``; the value is read as YAML."""
    text = override.removeprefix("--set").strip()
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not p for p in key.split(".")):
        raise ValueError("expected key.path=value, e.g. training.epochs=3")
    try:
        return key, yaml.load(value, Loader=_Loader) if value.strip() else None
    except yaml.YAMLError as err:
        raise ValueError(f"the value is not valid YAML: {err}") from None


def _override_parts(data: dict[str, Any], key: str) -> tuple[str, ...]:
    """Split an override's key; under ``search.space`` the rest names a space key (it has dots itself)."""
    parts = tuple(key.split("."))
    if parts[:2] != ("search", "space") or len(parts) <= 2:
        return parts
    space = (data.get("search") or {}).get("space") or {}
    rest = parts[2:]
    for n in range(len(rest), 0, -1):  # the longest existing space key that starts the rest
        if ".".join(rest[:n]) in space:
            return ("search", "space", ".".join(rest[:n])) + rest[n:]
    return ("search", "space", ".".join(rest))


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str) -> dict[tuple, str]:
    """Apply ``key.path=value`` overrides to the raw YAML data in place.

    Returns key path -> the override that set it (to name it in later errors).
    """
    origins: dict[tuple, str] = {}
    for override in overrides:
        label = f"--set {override.removeprefix('--set').strip()}"
        try:
            key, value = parse_override(override)
            parts = _override_parts(data, key)
            set_path(data, parts, value)
        except ValueError as err:
            raise ExperimentConfigError(source, [Problem((), f"bad override: {err}", origin=label)]) from None
        origins[parts] = label
    return origins


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
    """Validate raw (YAML-shaped) data: the schema, then the search space against it."""
    lines, origins = lines or {}, origins or {}
    if not isinstance(data, dict):
        raise ExperimentConfigError(source, [_not_a_mapping(data)])
    try:
        config = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ExperimentConfigError(source, _attribute(problems_of(err), origins), lines) from None
    problems = search_space_problems(config)
    if problems:
        raise ExperimentConfigError(source, _attribute(problems, origins), lines)
    config._source = source
    return config


def load_experiment(path: str | Path, overrides: Iterable[str] = ()) -> ExperimentConfig:
    """Read, override (``["training.epochs=3", ...]``; a leading ``--set`` is allowed) and validate a YAML file.

    Raises :class:`ExperimentConfigError` (a ``ValueError``) with one readable
    message naming the file, the key path (and line) and what was expected.
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        summary = f"{source}: cannot read the experiment config: {err.strerror or err}"
        raise ExperimentConfigError(source, [], summary=summary) from None
    data, lines = parse_yaml(text, source)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ExperimentConfigError(source, [_not_a_mapping(data)], lines)
    origins = apply_overrides(data, list(overrides), source)
    return validate_experiment(data, source, lines, origins)


"""The experiment YAML's reference, written from the schema itself: ``docs/config-reference.md``.

Every key of :class:`~flare_ray.experiment.config.ExperimentConfig`, its sections and theirs (the pydantic
models and dataclasses they are made of), with its type, allowed values, bounds, default and the ``Field``'s
own description. ``python -m flare_ray.experiment.reference docs/config-reference.md`` (``make docs``)
writes it; a test fails when the file in the repository is not what this writes.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from flare_ray.experiment.config import ExperimentConfig

COMMAND = "python -m flare_ray.experiment.reference docs/config-reference.md"
HEADER = f"""\
# The experiment YAML, key by key

<!-- Generated from the schema's Field descriptions by `{COMMAND}` (or `make docs`); do not edit by hand. -->

Every key a sweep's YAML (`flare-ray tune CONFIG.yaml`) accepts, section by section, as the schema
(`flare_ray/experiment/config.py` and the models it is made of) defines and checks it. A key left out takes
its default; an unknown key, a wrong type or a value out of bounds is an error naming the file, line and key
before Ray starts. Any key can be overridden on the command line (`--set training.learning_rate=1e-4`),
gridded (`search.grid`) or searched (`search.space`): see [sweeps.md](sweeps.md).
"""


def fields(model: type) -> dict[str, FieldInfo]:
    """The fields of a pydantic model or pydantic dataclass, in their order."""
    return dict(getattr(model, "__pydantic_fields__", None) or {})


def is_section(annotation: Any) -> bool:
    return inspect.isclass(annotation) and bool(fields(annotation))


def strip(annotation: Any) -> tuple[Any, list[Any]]:
    """``Annotated[X, ...]`` → X and its metadata."""
    metadata: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *more = typing.get_args(annotation)
        metadata += more
    return annotation, metadata


def members(annotation: Any) -> list[Any]:
    """The alternatives of a union (``X | None`` included); the annotation itself otherwise."""
    annotation, _ = strip(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in members(a)]
    return [annotation]


def type_text(annotation: Any) -> str:
    """A reader's spelling of a type: ``int``, ``list of str``, one of the allowed values, ``null``."""
    parts: list[str] = []
    for member in members(annotation):
        origin, args = typing.get_origin(member), typing.get_args(member)
        if member is type(None):
            text = "null"
        elif origin is typing.Literal:
            text = " \\| ".join(f"`{value}`" for value in args)
        elif inspect.isclass(member) and issubclass(member, enum.Enum):
            text = " \\| ".join(f"`{item.value}`" for item in member)
        elif origin in (list, tuple, set):
            inner = sorted({type_text(a) for a in args if a is not Ellipsis})
            text = f"list of {' or '.join(inner)}" if inner else "list"
        elif origin is dict:
            key, value = args
            value, _ = strip(value)
            value_text = "distribution" if _distributions(value) else type_text(value)
            text = f"map of {type_text(key)} to {value_text}"
        elif is_section(member):
            text = "section"
        elif member is Any:
            text = "any"
        elif inspect.isclass(member) and issubclass(member, Path):
            text = "path"
        elif inspect.isclass(member):
            text = {"str": "string", "bool": "boolean"}.get(member.__name__, member.__name__)
        else:
            text = str(member)
        if text not in parts:
            parts.append(text)
    return " or ".join(parts)


def annotated_metadata(annotation: Any) -> list[Any]:
    """The metadata of ``Annotated`` types anywhere in a union (``Annotated[int, Gt(0)] | None``)."""
    if typing.get_origin(annotation) is typing.Annotated:
        inner, *metadata = typing.get_args(annotation)
        return metadata + annotated_metadata(inner)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for a in typing.get_args(annotation) for m in annotated_metadata(a)]
    return []


def bounds_text(field: FieldInfo) -> str:
    """``≥ 1``, ``> 0, ≤ 1``, ``at least 1 item``: the Field's numeric and length bounds."""
    out = []
    for meta in [*field.metadata, *annotated_metadata(field.annotation)]:
        for attribute, sign in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if isinstance(meta, getattr(annotated_types, attribute.capitalize())):
                out.append(f"{sign} {getattr(meta, attribute)}")
        if isinstance(meta, annotated_types.MinLen) and meta.min_length:
            out.append(f"at least {meta.min_length} {'character' if field.annotation is str else 'item'}")
        pattern = getattr(meta, "pattern", None)
        if pattern:
            out.append(f"matches `{pattern}`")
    return ", ".join(dict.fromkeys(out))


def value_text(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, (list, tuple)):
        return f"`{json.dumps(list(value))}`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def default_text(field: FieldInfo) -> str:
    if field.default is not PydanticUndefined:
        return value_text(field.default)
    if field.default_factory is not None:
        if is_section(field.default_factory):
            return "(its defaults)"
        return value_text(field.default_factory())
    return "**required**"


def _distributions(annotation: Any) -> list[type]:
    """The models of a discriminated union (``search.space``'s values), else []."""
    found = [m for m in members(annotation) if is_section(m)]
    return found if len(found) > 1 else []


def docstring(model: type) -> str:
    """The first paragraph of a model's docstring, Sphinx roles and double backticks made plain Markdown."""
    text = inspect.cleandoc(model.__doc__ or "").split("\n\n")[0].replace("\n", " ")
    return re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text).replace("``", "`")


def cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").replace("\\\\|", "\\|").split())


def table(model: type, path: str, documented: dict[type, str]) -> tuple[list[str], list[tuple[type, str]]]:
    """The table of a section's keys, and the sections inside it (model, key path) still to write."""
    documented[model] = path
    lines = ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    nested: list[tuple[type, str]] = []
    for name, field in fields(model).items():
        key = f"{path}.{name}" if path else name
        description = field.description or ""
        for section in (m for m in members(field.annotation) if is_section(m)):
            if section in documented:
                description += f" (the keys of [`{documented[section]}`](#{anchor(documented[section])}))"
            else:
                nested.append((section, key))
                description += f" ([its keys](#{anchor(key)}))"
        value = strip(field.annotation)[0]
        if typing.get_origin(value) is dict and _distributions(typing.get_args(value)[1]):
            nested.append((typing.get_args(value)[1], f"{key}.<key>"))
            description += f" ([a distribution's keys](#{anchor(key + '.<key>')}))"
        bounds = bounds_text(field)
        kind = type_text(field.annotation) + (f" ({bounds})" if bounds else "")
        lines.append(f"| `{key}` | {cell(kind)} | {cell(default_text(field))} | {cell(description)} |")
    return lines + [""], nested


def sections(model: type, path: str, documented: dict[type, str]) -> list[str]:
    """The Markdown of one section (its docstring's first paragraph, a table of its keys), then of the sections
    inside it, depth first."""
    lines = [f"## `{path}`", "", docstring(model), ""] if path else ["## The top level", ""]
    rows, nested = table(model, path, documented)
    lines += rows
    for section, key in nested:
        kinds = _distributions(section)
        if not kinds:
            lines += sections(section, key, documented)
            continue
        lines += [f"## `{key}`", "", "A distribution, one of these three by its `type`:", ""]
        for kind in kinds:
            name = typing.get_args(fields(kind)["type"].annotation)[0]
            rows, _ = table(kind, key, documented)
            lines += [f"### `type: {name}`", "", docstring(kind), "", *rows]
    return lines


def anchor(heading_code: str) -> str:
    """GitHub's anchor of a ``## `key.path` `` heading: lower case, punctuation other than - and _ dropped."""
    return "".join(c for c in heading_code.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def reference() -> str:
    """The whole page (Markdown)."""
    return HEADER + "\n" + "\n".join(sections(ExperimentConfig, "", {})).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print(f"usage: {COMMAND}", file=sys.stderr)
        return 2
    Path(args[0]).write_text(reference())
    print(f"wrote {args[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

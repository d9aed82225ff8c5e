"""Key paths of the configuration schema: which exist, and reading/writing them in plain dicts.

A key path is dotted (``method.lora.r``). It walks the pydantic models' fields;
a field that is a mapping (``task.max_records``) takes any key as its next part
(``task.max_records.train``), which is checked when a value is written there.
"""

from __future__ import annotations

import typing
from typing import Any, Sequence, Union

from pydantic import BaseModel

from .errors import did_you_mean


def _members(tp: Any) -> list[Any]:
    """The types a field may hold: ``Annotated`` and ``Optional`` unwrapped, unions split."""
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _members(typing.get_args(tp)[0])
    if origin is Union or (origin is not None and getattr(origin, "__name__", "") == "UnionType"):
        return [m for a in typing.get_args(tp) for m in _members(a) if m is not type(None)]
    return [tp]


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _step(tp: Any, part: str | int) -> Any | None:
    """The type found under ``part`` inside a value of type ``tp`` (None: nothing there)."""
    for member in _members(tp):
        if _is_model(member):
            if part in member.model_fields:
                return member.model_fields[part].annotation
            tag = member.model_fields.get("type")
            if tag is not None and part in typing.get_args(tag.annotation):  # a union's tag
                return member
        origin = typing.get_origin(member)
        if origin is dict:
            return typing.get_args(member)[1]
        if origin is list and isinstance(part, int):
            return typing.get_args(member)[0]
    return None


def schema_at(root: type[BaseModel], loc: Sequence[str | int]) -> Any | None:
    """The type at a pydantic error location (union tags included), or None."""
    tp: Any = root
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return None
    return tp


def keys_at(root: type[BaseModel], loc: Sequence[str | int]) -> list[str] | None:
    """The keys a mapping at ``loc`` accepts (None: not a model there)."""
    models = [m for m in _members(schema_at(root, loc)) if _is_model(m)]
    return list(models[0].model_fields) if models else None


def split_key(root: type[BaseModel], dotted: str) -> tuple[str, ...]:
    """The parts of a dotted key path, checked against the schema.

    Raises ``ValueError`` naming the first part that does not exist and the keys
    that do.
    """
    parts = tuple(dotted.split("."))
    if not dotted or any(not p for p in parts):
        raise ValueError(f"{dotted!r} is not a dotted key path like 'method.lora.r'")
    tp: Any = root
    for i, part in enumerate(parts):
        models = [m for m in _members(tp) if _is_model(m)]
        mappings = [m for m in _members(tp) if typing.get_origin(m) is dict]
        here = ".".join(parts[:i]) or "the config"
        if models:
            fields = models[0].model_fields
            if part not in fields:
                raise ValueError(
                    f"{dotted!r} is not a key of the config: {here} has no key {part!r}"
                    f"{did_you_mean(part, fields)}; expected one of {list(fields)}"
                )
            tp = fields[part].annotation
        elif mappings:
            tp = typing.get_args(mappings[0])[1]
        else:
            raise ValueError(f"{dotted!r} is not a key of the config: {here} is a value, not a section")
    return parts


def all_keys(root: type[BaseModel], prefix: str = "") -> list[str]:
    """Every dotted key path through the models' fields (sections and values)."""
    out: list[str] = []
    for name, info in root.model_fields.items():
        path = f"{prefix}{name}"
        out.append(path)
        for member in _members(info.annotation):
            if _is_model(member):
                out += all_keys(member, path + ".")
    return out


def get_path(data: Any, parts: Sequence[str]) -> Any:
    """The value at ``parts`` in nested dicts (or models); ``KeyError`` if absent."""
    for part in parts:
        if isinstance(data, BaseModel):
            data = getattr(data, part)
        elif isinstance(data, dict):
            data = data[part]
        else:
            raise KeyError(part)
    return data


def set_path(data: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    """Write ``value`` at ``parts`` in nested dicts, creating sections on the way.

    Raises ``ValueError`` when a part on the way holds a value, not a section.
    """
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise ValueError(f"{'.'.join(parts[: i + 1])} is a value ({nxt!r}), not a section")
        node = nxt
    node[parts[-1]] = value

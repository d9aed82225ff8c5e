"""YAML config files: YAML 1.2 scalars, the line of every key, duplicate keys, dotted key paths, and one
error naming the file, line, key path and what was expected, made from pydantic's own locations and messages
(plus a "did you mean" for unknown keys). Used by the experiment YAML and the translation config.

Numbers and booleans are read as YAML 1.2 reads them: ``2e-4`` is a float (YAML
1.1 and PyYAML's default read it as a string) and only ``true``/``false`` are
booleans (``no``/``on`` stay strings, as language codes may be).

What is read is bounded (:func:`read_config_text`, :func:`parse_yaml`, :func:`parse_value`): a file over
:data:`MAX_BYTES` or not UTF-8, nesting beyond :data:`MAX_DEPTH`, more than :data:`MAX_NODES` nodes once
aliases are expanded, and a recursive alias are each one :class:`ConfigTextError` naming the file, line and limit.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from pydantic import ValidationError

KeyPath = tuple[str | int, ...]  # mapping keys (str) and list indices (int)
_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")

# Limits on what is read as a config (the file, and each --set value), far above any real one: the largest
# shipped experiment YAML is under 5 KB, under 100 lines and under 10 levels deep. They keep a hostile or broken
# file from taking gigabytes, minutes or Python's stack ("billion laughs": a few KB of nested aliases).
MAX_BYTES = 1024 * 1024  # a config file's size (1 MiB); no more than this is read
MAX_DEPTH = 100  # sections and lists inside each other
MAX_NODES = 100_000  # keys, values, lists and mappings, an alias (*name) counted as all it stands for


class FieldError(ValueError):
    """A check across fields failed at ``path`` (relative to the model that raises it)."""

    def __init__(self, path: tuple[str | int, ...] | str, message: str) -> None:
        super().__init__(message)
        self.path, self.message = ((path,) if isinstance(path, str) else tuple(path)), message


class YAMLSyntaxError(ValueError):
    """The text is not YAML; the message names the source, line and column."""


class ConfigTextError(YAMLSyntaxError):
    """The text is not one this reader takes: over a limit (:data:`MAX_BYTES`, :data:`MAX_DEPTH`,
    :data:`MAX_NODES`) or not UTF-8; the message names the source, the line where known, and the limit."""


class _Refused(yaml.YAMLError):
    """A limit passed while composing: ``problem`` (to follow "the YAML" or "the value") at ``mark``."""

    def __init__(self, problem: str, mark: yaml.Mark) -> None:
        super().__init__(problem)
        self.problem, self.mark = problem, mark


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 floats (``1e-4``) and booleans (``true``/``false`` only), that refuses
    (:class:`_Refused`) nesting beyond :data:`MAX_DEPTH`, more than :data:`MAX_NODES` nodes with aliases
    expanded, and an alias used inside its own anchor (a recursive structure)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0  # collections being composed around the current node
        self._nodes = 0  # nodes composed so far, each alias counted as the nodes it stands for
        self._sizes: dict[int, int] = {}  # id of each composed node -> its nodes with aliases expanded

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        target = self.anchors.get(event.anchor) if isinstance(event, yaml.AliasEvent) else None
        if target is not None and id(target) not in self._sizes:  # still being composed: the alias is inside it
            name = event.anchor
            raise _Refused(
                f"uses the alias *{name} inside its own anchor &{name} (a recursive structure)", event.start_mark
            )
        self._nodes += self._sizes[id(target)] if target is not None else 1
        if self._nodes > MAX_NODES:
            raise _Refused(
                f"holds more than the limit of {MAX_NODES:,} nodes (an alias counted as all it stands for)",
                event.start_mark,
            )
        if isinstance(event, yaml.AliasEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(f"nests deeper than the limit of {MAX_DEPTH} levels", event.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in _children(node))
        return node


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
)


def _children(node: yaml.Node) -> list[yaml.Node]:
    """The nodes right inside ``node``: a mapping's keys and values, a list's items."""
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def read_config_text(path: str | Path) -> str:
    """The text of a config file; :class:`ConfigTextError` when it is over :data:`MAX_BYTES` (no more than
    that is read) or not UTF-8 (naming the line and column of the first bad byte). ``OSError`` if unreadable."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno())
        if stat.S_ISREG(size.st_mode) and size.st_size > MAX_BYTES:
            raise ConfigTextError(f"{path}: {size.st_size:,} bytes, over the limit of {MAX_BYTES:,} for a config file")
        data = file.read(MAX_BYTES + 1)  # a pipe or device has no size to look at first
    if len(data) > MAX_BYTES:
        raise ConfigTextError(f"{path}: over the limit of {MAX_BYTES:,} bytes for a config file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        start = data.rfind(b"\n", 0, err.start) + 1  # of the bad byte's line
        line, column = data.count(b"\n", 0, start) + 1, len(data[start : err.start].decode("utf-8")) + 1
        raise ConfigTextError(
            f"{path}, line {line}, column {column}: not UTF-8 text (byte 0x{data[err.start]:02x}); save it as UTF-8"
        ) from None


def _unprintable(text: str, err: yaml.reader.ReaderError) -> str:
    """Where in ``text`` the character that YAML does not allow is, and which (``line 2, column 5: ...``)."""
    line, column = text.count("\n", 0, err.position) + 1, err.position - text.rfind("\n", 0, err.position)
    return f"line {line}, column {column}: YAML does not allow the control character #x{err.character:04x}"


def _at(source: str, mark: yaml.Mark | None) -> str:
    return f"{source}, line {mark.line + 1}, column {mark.column + 1}" if mark else source


def parse_yaml(text: str, source: str) -> tuple[Any, dict[KeyPath, int], list[tuple[KeyPath, int]]]:
    """The document, the line (1-based) of every key path in it, and each duplicate key with the line
    of its first occurrence. :class:`YAMLSyntaxError` naming ``source`` and the line
    (:class:`ConfigTextError` beyond :data:`MAX_DEPTH` or :data:`MAX_NODES`, or for a recursive alias)."""
    loader = None
    try:
        loader = _Loader(text)  # checks every character first
        node = loader.get_single_node()
        lines: dict[KeyPath, int] = {}
        duplicates: list[tuple[KeyPath, int]] = []
        if node is not None:  # before the document is constructed, which writes merge keys (<<) into the mappings
            _index(node, (), lines, duplicates, set())
        data = loader.construct_document(node) if node is not None else None
    except yaml.reader.ReaderError as err:  # a control character, e.g. NUL
        raise YAMLSyntaxError(f"{source}, {_unprintable(text, err)}") from None
    except _Refused as err:
        raise ConfigTextError(f"{_at(source, err.mark)}: the YAML {err.problem}") from None
    except yaml.MarkedYAMLError as err:
        problem = " ".join(str(p) for p in (err.context, err.problem) if p)
        where = _at(source, err.problem_mark or err.context_mark)
        raise YAMLSyntaxError(f"{where}: YAML syntax error: {problem}") from None
    except yaml.YAMLError as err:
        raise YAMLSyntaxError(f"{source}: YAML error: {err}") from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, lines, duplicates


def _index(node: yaml.Node, path: KeyPath, lines: dict, duplicates: list, seen: set[int]) -> None:
    """Record the line of every key path under ``node`` (at ``path``) and each duplicate key. A node met again
    through an alias is not indexed again: its keys have their lines at the anchor's path (and a path under the
    alias falls back to the alias's line), so the aliases are never expanded here."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key_node, value_node in node.value:
            key, line = str(key_node.value), key_node.start_mark.line + 1
            if key in first:
                duplicates.append((path + (key,), first[key]))
            first.setdefault(key, line)
            lines[path + (key,)] = line
            _index(value_node, path + (key,), lines, duplicates, seen)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            _index(item, path + (i,), lines, duplicates, seen)


def parse_value(text: str) -> Any:
    """One value written as YAML (``3``, ``[a, b]``, ``{r: 4}``); empty text is null. ``ValueError`` when it is
    not YAML, or over a limit (:data:`MAX_BYTES` characters, :data:`MAX_DEPTH`, :data:`MAX_NODES`)."""
    if len(text) > MAX_BYTES:
        raise ValueError(f"the value is {len(text):,} characters, over the limit of {MAX_BYTES:,}")
    try:
        return yaml.load(text, Loader=_Loader) if text.strip() else None
    except _Refused as err:
        line = f"line {err.mark.line + 1}, " if err.mark.line else ""
        raise ValueError(f"the value {err.problem} ({line}column {err.mark.column + 1})") from None
    except yaml.reader.ReaderError as err:
        raise ValueError(f"the value is not valid YAML: {_unprintable(text, err)}") from None
    except yaml.YAMLError as err:
        raise ValueError(f"the value is not valid YAML: {err}") from None


def get_path(data: Any, parts: Sequence[str]) -> Any:
    """The value at ``parts`` in nested dicts; ``KeyError`` if absent."""
    for part in parts:
        if not isinstance(data, dict) or part not in data:
            raise KeyError(part)
        data = data[part]
    return data


def set_path(data: dict[str, Any], parts: Sequence[str], value: Any) -> None:
    """Write ``value`` at ``parts`` in nested dicts, creating sections on the way."""
    for i, part in enumerate(parts[:-1]):
        if data.get(part) is None:
            data[part] = {}
        if not isinstance(data[part], dict):
            raise ValueError(f"{'.'.join(parts[: i + 1])} is a value ({data[part]!r}), not a section")
        data = data[part]
    data[parts[-1]] = value


@dataclass
class Problem:
    """One thing wrong with the configuration."""

    path: KeyPath
    message: str
    origin: str | None = None  # e.g. "--set training.epochs=x", when not the file


class ConfigFileError(ValueError):
    """A config file is invalid; ``str()`` is the readable report (``what``: the kind of file)."""

    what = "config"

    def __init__(self, source: str, problems: list[Problem], lines: dict | None = None, summary: str | None = None):
        self.source, self.problems, self.lines, self.summary = source, list(problems), dict(lines or {}), summary
        super().__init__(str(self))

    def __reduce__(self):  # picklable (Ray ships exceptions between processes)
        return type(self), (self.source, self.problems, self.lines, self.summary)

    def __str__(self) -> str:
        if self.summary:
            return self.summary
        n = len(self.problems)
        head = f"{self.source}: invalid {self.what} ({n} problem{'s' if n != 1 else ''})"
        return "\n".join([head] + [f"  {self._where(p)}: {p.message}" for p in self.problems])

    def _where(self, problem: Problem) -> str:
        where = format_path(problem.path) or "<top level>"
        if problem.origin:
            return f"{where} (from {problem.origin})"
        line = next(
            (self.lines[problem.path[:n]] for n in range(len(problem.path), 0, -1) if problem.path[:n] in self.lines),
            None,
        )  # the key's line, or its nearest section's
        return f"line {line}, {where}" if line else where


def format_path(path: Iterable[str | int]) -> str:
    """``("search", "space", "method.lora.r", "values", 2)`` -> ``search.space.method.lora.r.values[2]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    close = close or sorted((o for o in options if str(word).startswith(o) or o.startswith(str(word))), key=len)[-1:]
    return f" (did you mean {close[0]!r}?)" if close else ""


def keys_at(root: type, loc: KeyPath) -> list[str]:
    """The keys the section at a pydantic error location accepts (union tags included)."""
    tp: Any = root
    for part in loc:  # a part no member has is a union's tag (search.seeds.adaptive): the same section
        tp = next((t for t in [_child(m, part) for m in _members(tp)] if t is not None), tp)
    return next((list(m.__pydantic_fields__) for m in _members(tp) if hasattr(m, "__pydantic_fields__")), [])


def _members(tp: Any) -> list[Any]:
    if typing.get_origin(tp) in (typing.Annotated, typing.Union) or type(tp).__name__ == "UnionType":
        return [
            m
            for a in typing.get_args(tp)[: 1 if typing.get_origin(tp) is typing.Annotated else None]
            for m in _members(a)
        ]
    return [tp]


def _child(tp: Any, part: str | int) -> Any:
    fields = getattr(tp, "__pydantic_fields__", None)
    if fields is not None:
        tag = fields.get("type")
        return (
            fields[part].annotation
            if part in fields
            else tp
            if tag and part in typing.get_args(tag.annotation)
            else None
        )
    origin = typing.get_origin(tp)
    return typing.get_args(tp)[-1] if origin is dict or (origin is list and isinstance(part, int)) else None


def problems_of(err: ValidationError, root: type, prefix: KeyPath = ()) -> list[Problem]:
    """Readable problems from pydantic's errors of a ``root`` model (locations as pydantic gives them,
    union tags included)."""
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(x for x in e["loc"] if x != "[key]")
        path = prefix + loc
        error = (e.get("ctx") or {}).get("error")
        if isinstance(error, FieldError):
            problems.append(Problem(path + error.path, error.message))
            continue
        if e["type"] in _UNKNOWN:
            allowed = keys_at(root, loc[:-1])
            message = f"unknown key {loc[-1]!r}{did_you_mean(loc[-1], allowed)}; expected one of {allowed}"
        elif e["type"] in ("value_error", "missing"):
            message = e["msg"].removeprefix("Value error, ")
        else:
            got = repr(e.get("input"))
            message = f"{e['msg']}; got {got if len(got) <= 80 else got[:77] + '...'}"
        problems.append(Problem(path, message))
    return problems

"""Everything wrong with an experiment config, as one error naming the file, line, key path and expectation.

The messages are pydantic's own (and those of the validators of the sections);
an unknown key gets a "did you mean" from the keys its section has.
"""

from __future__ import annotations

import difflib
import typing
from dataclasses import dataclass
from typing import Any, Iterable

from pydantic import ValidationError

from .config import ExperimentConfig, FieldError

KeyPath = tuple[str | int, ...]  # mapping keys (str) and list indices (int)
_UNKNOWN = ("extra_forbidden", "unexpected_keyword_argument")


@dataclass
class Problem:
    """One thing wrong with the configuration."""

    path: KeyPath
    message: str
    origin: str | None = None  # e.g. "--set training.epochs=x", when not the file


class ExperimentConfigError(ValueError):
    """The experiment configuration is invalid; ``str()`` is the readable report."""

    def __init__(self, source: str, problems: list[Problem], lines: dict | None = None, summary: str | None = None):
        self.source, self.problems, self.lines, self.summary = source, list(problems), dict(lines or {}), summary
        super().__init__(str(self))

    def __reduce__(self):  # picklable (Ray ships exceptions between processes)
        return type(self), (self.source, self.problems, self.lines, self.summary)

    def __str__(self) -> str:
        if self.summary:
            return self.summary
        n = len(self.problems)
        head = f"{self.source}: invalid experiment config ({n} problem{'s' if n != 1 else ''})"
        return "\n".join([head] + [f"  {self._where(p)}: {p.message}" for p in self.problems])

    def _where(self, problem: Problem) -> str:
        where = format_path(problem.path) or "<top level>"
        if problem.origin:
            return f"{where} (from {problem.origin})"
        line = next((self.lines[problem.path[:n]] for n in range(len(problem.path), 0, -1)
                     if problem.path[:n] in self.lines), None)  # the key's line, or its nearest section's
        return f"line {line}, {where}" if line else where


def format_path(path: Iterable[str | int]) -> str:
    """``("search", "space", "method.lora.r", "values", 2)`` -> ``search.space.method.lora.r.values[2]``."""
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")


def did_you_mean(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(str(word), options, n=1, cutoff=0.6)
    close = close or sorted((o for o in options if str(word).startswith(o) or o.startswith(str(word))), key=len)[-1:]
    return f" (did you mean {close[0]!r}?)" if close else ""


def keys_at(loc: KeyPath) -> list[str]:
    """The keys the section at a pydantic error location accepts (union tags included)."""
    tp: Any = ExperimentConfig
    for part in loc:
        tp = next((t for t in [_child(m, part) for m in _members(tp)] if t is not None), None)
    return next((list(m.__pydantic_fields__) for m in _members(tp) if hasattr(m, "__pydantic_fields__")), [])


def _members(tp: Any) -> list[Any]:
    if typing.get_origin(tp) in (typing.Annotated, typing.Union) or type(tp).__name__ == "UnionType":
        return [m for a in typing.get_args(tp)[: 1 if typing.get_origin(tp) is typing.Annotated else None]
                for m in _members(a)]
    return [tp]


def _child(tp: Any, part: str | int) -> Any:
    fields = getattr(tp, "__pydantic_fields__", None)
    if fields is not None:
        tag = fields.get("type")
        return fields[part].annotation if part in fields else tp if tag and part in typing.get_args(tag.annotation) else None
    return typing.get_args(tp)[-1] if typing.get_origin(tp) in (dict, list) else None


def problems_of(err: ValidationError, prefix: KeyPath = ()) -> list[Problem]:
    """Readable problems from pydantic's errors (the distribution tag dropped from the key path)."""
    problems = []
    for e in err.errors(include_url=False):
        loc = tuple(x for x in e["loc"] if x != "[key]")
        path = prefix + (loc[:3] + loc[4:] if loc[:2] == ("search", "space") and len(loc) > 3 else loc)
        error = (e.get("ctx") or {}).get("error")
        if isinstance(error, FieldError):
            problems.append(Problem(path + error.path, error.message))
            continue
        if e["type"] in _UNKNOWN:
            allowed = keys_at(loc[:-1])
            message = f"unknown key {loc[-1]!r}{did_you_mean(loc[-1], allowed)}; expected one of {allowed}"
        elif e["type"] in ("value_error", "missing"):
            message = e["msg"].removeprefix("Value error, ")
        else:
            got = repr(e.get("input"))
            message = f"{e['msg']}; got {got if len(got) <= 80 else got[:77] + '...'}"
        problems.append(Problem(path, message))
    return problems

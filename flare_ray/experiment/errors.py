"""Errors of the experiment configuration, each naming the file, the key path and what was expected.

Validators inside the models raise :class:`FieldError` (a ``ValueError`` that
carries a key path relative to the model being validated); pydantic keeps the
exception object, so :func:`problems_from_validation_error` can put the path
back together. Everything the loader finds wrong ends up as a list of
:class:`Problem` in one :class:`ExperimentConfigError`.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

from pydantic import ValidationError

Path = tuple[str | int, ...]  # a key path: mapping keys (str) and list indices (int)

# Tags of the search-space distribution union; pydantic puts the tag into error
# locations (``search.space.<key>.categorical.values``), readers do not need it.
DISTRIBUTION_TAGS = ("categorical", "int", "float", "loguniform")


class FieldError(ValueError):
    """A validation failure at ``path`` (relative to the model that raises it)."""

    def __init__(self, path: Sequence[str | int] | str, message: str) -> None:
        super().__init__(message)
        self.path: Path = (path,) if isinstance(path, str) else tuple(path)
        self.message = message


@dataclass
class Problem:
    """One thing wrong with the configuration."""

    path: Path
    message: str
    origin: str | None = None  # e.g. "--set training.epochs=x", when not the file


class ExperimentConfigError(ValueError):
    """The experiment configuration is invalid; ``str()`` is the readable report.

    Attributes:
        source: the YAML file (or ``"<dict>"``) the configuration came from.
        problems: what is wrong, each with its key path.
        lines: key path -> line in ``source``, used to point at the line.
        summary: replaces the per-problem report (YAML syntax errors).
    """

    def __init__(
        self, source: str, problems: list[Problem], lines: dict[Path, int] | None = None, summary: str | None = None
    ) -> None:
        self.source, self.problems, self.lines, self.summary = source, list(problems), dict(lines or {}), summary
        super().__init__(self._render())

    def __reduce__(self):  # picklable (Ray ships exceptions between processes)
        return (type(self), (self.source, self.problems, self.lines, self.summary))

    def __str__(self) -> str:
        return self._render()

    def _render(self) -> str:
        if self.summary:
            return self.summary
        n = len(self.problems)
        head = f"{self.source}: invalid experiment config ({n} problem{'s' if n != 1 else ''})"
        return "\n".join([head] + [f"  {self._where(p)}: {p.message}" for p in self.problems])

    def _where(self, problem: Problem) -> str:
        where = format_path(problem.path) or "<top level>"
        if problem.origin:
            return f"{where} (from {problem.origin})"
        line = line_of(problem.path, self.lines)
        return f"line {line}, {where}" if line else where


def format_path(path: Iterable[str | int]) -> str:
    """``("search", "space", "method.lora.r", "values", 2)`` -> ``search.space.method.lora.r.values[2]``."""
    out = ""
    for item in path:
        if isinstance(item, int):
            out += f"[{item}]"
        else:
            out += f".{item}" if out else str(item)
    return out


def line_of(path: Path, lines: dict[Path, int]) -> int | None:
    """The line of ``path`` in the file, or of its nearest ancestor that is there."""
    for n in range(len(path), 0, -1):
        if path[:n] in lines:
            return lines[path[:n]]
    return None


def short_repr(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def did_you_mean(word: str, options: Iterable[str]) -> str:
    word, options = str(word), [str(o) for o in options]
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    close = close or sorted((o for o in options if word.startswith(o) or o.startswith(word)), key=len)[-1:]
    return f" (did you mean {close[0]!r}?)" if close else ""


def problems_from_validation_error(
    err: ValidationError, allowed_keys: Callable[[Path], list[str] | None], prefix: Path = ()
) -> list[Problem]:
    """Readable problems from pydantic's errors.

    ``allowed_keys(loc)`` names the keys a mapping at ``loc`` (pydantic's location,
    union tags included) accepts, for "unknown key" messages.
    """
    problems: list[Problem] = []
    for e in err.errors():
        loc: Path = tuple(e["loc"])
        kind, ctx, value = e["type"], e.get("ctx") or {}, e.get("input")
        path = prefix + _strip_tags(tuple(x for x in loc if x != "[key]"))  # "[key]": a bad mapping key
        if kind == "value_error" and isinstance(ctx.get("error"), FieldError):
            fe: FieldError = ctx["error"]
            problems.append(Problem(path + fe.path, fe.message))
            continue
        if kind == "value_error":
            message = str(ctx.get("error", e["msg"]))
        elif kind == "extra_forbidden":
            allowed = allowed_keys(loc[:-1]) or []
            message = f"unknown key {loc[-1]!r}{did_you_mean(str(loc[-1]), allowed)}; expected one of {allowed}"
        elif kind == "missing":
            message = "missing required key"
        elif kind == "union_tag_invalid":
            path += ("type",)
            message = f"unknown distribution type {ctx.get('tag')!r}; expected one of {ctx.get('expected_tags')}"
        elif kind == "union_tag_not_found":
            message = f"missing 'type'; expected one of {', '.join(DISTRIBUTION_TAGS)}"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
            bound = next(iter(ctx.values()))
            message = f"expected a number {op} {bound}; got {short_repr(value)}"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            message = f"expected a mapping (key: value); got {short_repr(value)}"
        elif kind == "string_pattern_mismatch":
            message = f"expected a string matching {ctx.get('pattern')!r}; got {short_repr(value)}"
        else:
            message = e["msg"].replace("Input should be", "expected", 1) + f"; got {short_repr(value)}"
        problems.append(Problem(path, message))
    return problems


def _strip_tags(loc: Path) -> Path:
    """Drop the distribution tag pydantic inserts after ``search.space.<key>``."""
    if len(loc) > 3 and loc[:2] == ("search", "space") and loc[3] in DISTRIBUTION_TAGS:
        return loc[:3] + loc[4:]
    return loc

"""Search-space distributions: what one key of the config is sampled from.

In YAML, ``search.space`` maps a dotted key path of the config to one of::

    {type: categorical, values: [...]}
    {type: int, low: 2, high: 64, step: 2, log: false}
    {type: float, low: 0.0, high: 0.3, step: 0.05}
    {type: loguniform, low: 1.0e-5, high: 1.0e-3}

Each may carry ``when: {other.key.path: value-or-list}``: it is sampled only if
that key (sampled earlier in the space, or fixed in the config) has the value
(or one of the listed values; to match a list-valued key, list the list:
``[[0, 1]]``). Otherwise the key keeps its value from the config; a referenced
key that was itself not sampled counts with its value from the config.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import FieldError

_OPTUNA_SCALARS = (type(None), bool, int, float, str)


class _Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    when: dict[str, Any] = Field(
        default_factory=dict,
        description="sample only when each listed key (sampled earlier, or fixed) has this value or one of these values",
    )

    def condition_values(self, key: str) -> list[Any]:
        """The values of ``when[key]`` that satisfy the condition."""
        wanted = self.when[key]
        return list(wanted) if isinstance(wanted, list) else [wanted]

    def holds(self, values: dict[str, Any]) -> bool:
        """Does the ``when`` condition hold for these (effective) values of the config?"""
        return all(values.get(k) in self.condition_values(k) for k in self.when)

    def suggest(self, trial: Any, name: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def candidates(self) -> list[tuple[tuple[str | int, ...], Any]]:
        """Values to try on the config before any trial runs, with where each is written."""
        raise NotImplementedError  # pragma: no cover

    def describe(self) -> str:
        raise NotImplementedError  # pragma: no cover


class Categorical(_Distribution):
    """One of the listed values (any YAML value: numbers, strings, lists, mappings, null)."""

    type: Literal["categorical"] = Field(description="categorical")
    values: list[Any] = Field(min_length=1, description="the choices")

    @model_validator(mode="after")
    def _unique(self) -> "Categorical":
        seen: list[str] = []
        for i, v in enumerate(self.values):
            label = _exact(v)
            if label in seen:
                raise FieldError(("values", i), f"duplicate choice {v!r} (also values[{seen.index(label)}])")
            seen.append(label)
        return self

    @property
    def _encoded(self) -> bool:
        """Optuna takes only None/bool/int/float/str choices; others are sampled by label."""
        return not all(isinstance(v, _OPTUNA_SCALARS) for v in self.values)

    def suggest(self, trial: Any, name: str) -> Any:
        if not self._encoded:
            return trial.suggest_categorical(name, list(self.values))
        labels = [_label(v) for v in self.values]
        if len(set(labels)) < len(labels):  # e.g. "1" and 1: fall back to labels that keep the type
            labels = [_exact(v) for v in self.values]
        return self.values[labels.index(trial.suggest_categorical(name, labels))]

    def candidates(self):
        return [(("values", i), v) for i, v in enumerate(self.values)]

    def describe(self) -> str:
        return f"categorical {_flow(self.values)}"


class IntRange(_Distribution):
    """An integer in ``[low, high]`` (both included) on a grid of ``step``, optionally log-scaled."""

    type: Literal["int"] = Field(description="int")
    low: int = Field(description="smallest value")
    high: int = Field(description="largest value")
    step: int = Field(1, ge=1, description="grid spacing (must divide high - low; 1 with log)")
    log: bool = Field(False, description="sample on a log scale (needs low >= 1 and step 1)")

    @model_validator(mode="after")
    def _bounds(self) -> "IntRange":
        _check_bounds(self.low, self.high, self.log)
        if self.log and self.step != 1:
            raise FieldError("step", f"a log-scaled int range needs step 1; got {self.step}")
        if (self.high - self.low) % self.step:
            raise FieldError("step", f"step {self.step} does not divide high - low ({self.high} - {self.low})")
        return self

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)

    def candidates(self):
        return [(("low",), self.low), (("high",), self.high)]

    def describe(self) -> str:
        step = f" step {self.step}" if self.step != 1 else ""
        return f"int [{self.low}, {self.high}]{step}" + (" log" if self.log else "")


class FloatRange(_Distribution):
    """A float in ``[low, high]``, optionally on a grid of ``step`` or log-scaled."""

    type: Literal["float"] = Field(description="float")
    low: float = Field(description="lower bound")
    high: float = Field(description="upper bound")
    step: float | None = Field(None, gt=0, description="grid spacing (must divide high - low); not with log")
    log: bool = Field(False, description="sample on a log scale (needs low > 0)")

    @model_validator(mode="after")
    def _bounds(self) -> "FloatRange":
        _check_bounds(self.low, self.high, self.log)
        if self.step is not None:
            if self.log:
                raise FieldError("step", "a log-scaled float range takes no step")
            n = (self.high - self.low) / self.step
            if not math.isclose(n, round(n), rel_tol=1e-9, abs_tol=1e-9):
                raise FieldError("step", f"step {self.step} does not divide high - low ({self.high} - {self.low})")
        return self

    def suggest(self, trial: Any, name: str) -> float:
        value = trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        return float(f"{value:.12g}") if self.step is not None else value  # 0.15, not 0.15000000000000002

    def candidates(self):
        mid = self.low + 0.37 * (self.high - self.low)  # a value between the bounds, rarely an integer
        if self.step is not None:
            mid = self.low + round((mid - self.low) / self.step) * self.step
        return [(("low",), self.low), (("high",), self.high), ((), mid)]

    def describe(self) -> str:
        step = f" step {self.step:g}" if self.step else ""
        return f"float [{self.low:g}, {self.high:g}]{step}" + (" log" if self.log else "")


class LogUniform(_Distribution):
    """A float in ``[low, high]`` sampled uniformly in log space (learning rates)."""

    type: Literal["loguniform"] = Field(description="loguniform")
    low: float = Field(description="lower bound (> 0)")
    high: float = Field(description="upper bound")

    @model_validator(mode="after")
    def _bounds(self) -> "LogUniform":
        _check_bounds(self.low, self.high, log=True)
        return self

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)

    def candidates(self):
        return [(("low",), self.low), (("high",), self.high), ((), math.sqrt(self.low * self.high))]

    def describe(self) -> str:
        return f"loguniform [{self.low:g}, {self.high:g}]"


Distribution = Annotated[Union[Categorical, IntRange, FloatRange, LogUniform], Field(discriminator="type")]
DISTRIBUTIONS: dict[str, type[_Distribution]] = {
    "categorical": Categorical, "int": IntRange, "float": FloatRange, "loguniform": LogUniform,
}  # fmt: skip


def _check_bounds(low: float, high: float, log: bool) -> None:
    if log and low <= 0:
        raise FieldError("low", f"a log-scaled distribution needs low > 0; got {low}")
    if low >= high:
        raise FieldError("high", f"expected high > low; got low {low}, high {high}")


def _exact(value: Any) -> str:
    """A string that tells any two different YAML values apart (types included)."""
    return json.dumps(value, sort_keys=True, default=str)


def _label(value: Any) -> str:
    """The Optuna choice (a string) standing for a value Optuna cannot take: readable, in flow YAML."""
    return value if isinstance(value, str) else _flow(value)


def _flow(value: Any) -> str:
    """A value as one line of YAML flow style."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()

"""What one key of ``search.space`` is sampled from; each is checked by Optuna's own distribution.

    {type: categorical, values: [...]}                  # any YAML values: numbers, strings, lists, null
    {type: int, low: 2, high: 64, step: 2, log: false}
    {type: float, low: 1.0e-5, high: 1.0e-3, log: true}  # ({type: loguniform, ...} is read as this)

Each may carry ``when: {other.key.path: value-or-list}``: it is sampled only if
that key (sampled earlier, or fixed in the config) has the value or one of the
listed values (to match a list-valued key, list the list: ``[[0, 1]]``).
"""

from __future__ import annotations

import json
import warnings
from typing import Annotated, Any, Literal, Union, get_args

import optuna.distributions as od
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


def flow(value: Any) -> str:
    """A value as one line of YAML flow style."""
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def with_float_log(space: Any) -> Any:
    """``{type: loguniform, ...}`` as ``{type: float, log: true, ...}``."""
    if not isinstance(space, dict):
        return space
    return {
        k: {**d, "type": "float", "log": True} if isinstance(d, dict) and d.get("type") == "loguniform" else d
        for k, d in space.items()
    }


class _Distribution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    when: dict[str, Any] = Field(
        default_factory=dict, description="sample only when each listed key has this value or one of these values"
    )

    @model_validator(mode="after")
    def _optuna_accepts(self) -> "_Distribution":
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # Optuna warns, and moves high, when step does not divide high - low
            self.optuna()
        return self

    def optuna(self) -> od.BaseDistribution:
        raise NotImplementedError

    def condition_values(self, key: str) -> list[Any]:
        """The values of ``when[key]`` that satisfy the condition."""
        return list(self.when[key]) if isinstance(self.when[key], list) else [self.when[key]]

    def holds(self, values: dict[str, Any]) -> bool:
        return all(values.get(k) in self.condition_values(k) for k in self.when)


class Categorical(_Distribution):
    """One of the listed values; Optuna samples their labels (strings) where a value is no scalar."""

    type: Literal["categorical"] = Field(description="categorical: one of values")
    values: list[Any] = Field(min_length=1, description="the choices")

    @model_validator(mode="after")
    def _unique(self) -> "Categorical":
        first: dict[Any, int] = {}  # label -> where it is first (labels are scalars or JSON text: hashable)
        for i, label in enumerate(self.labels()):
            if label in first:
                raise ValueError(f"values[{i}]: duplicate choice {self.values[i]!r} (also values[{first[label]}])")
            first[label] = i
        return self

    def labels(self) -> list[Any]:
        if all(isinstance(v, (type(None), bool, int, float, str)) for v in self.values):
            return list(self.values)
        return [json.dumps(v, sort_keys=True) for v in self.values]

    def optuna(self) -> od.CategoricalDistribution:
        return od.CategoricalDistribution(self.labels())

    def suggest(self, trial: Any, name: str) -> Any:
        labels = self.labels()
        return self.values[labels.index(trial.suggest_categorical(name, labels))]

    def candidates(self) -> list[Any]:
        return list(self.values)

    def describe(self) -> str:
        return f"categorical {flow(self.values)}"


class _Range(_Distribution):
    def candidates(self) -> list[Any]:
        d = self.optuna()
        if isinstance(d, od.IntDistribution):
            return [d.low, d.high]
        mid = (d.low * d.high) ** 0.5 if d.log else d.low + 0.37 * (d.high - d.low)  # rarely an integer
        return [d.low, d.high, d.low + round((mid - d.low) / d.step) * d.step if d.step else mid]

    def describe(self) -> str:
        d = self.optuna()
        step = f" step {d.step:g}" if d.step not in (None, 1) else ""
        return f"{self.type} [{d.low:g}, {d.high:g}]{step}" + (" log" if d.log else "")


class IntRange(_Range):
    """An integer in ``[low, high]`` (both included) on a grid of ``step``, optionally log-scaled."""

    type: Literal["int"] = Field(description="int: an integer between low and high")
    low: int = Field(description="the smallest value")
    high: int = Field(description="the largest value (included)")
    step: int = Field(1, description="values low, low + step, ... up to high")
    log: bool = Field(False, description="sample on a log scale (step must be 1)")

    def optuna(self) -> od.IntDistribution:
        return od.IntDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, step=self.step, log=self.log)


class FloatRange(_Range):
    """A float in ``[low, high]``, optionally on a grid of ``step`` or log-scaled (learning rates)."""

    type: Literal["float"] = Field(
        description="float: a number between low and high ('loguniform' is read as float with log: true)"
    )
    low: float = Field(description="the smallest value")
    high: float = Field(description="the largest value")
    step: float | None = Field(None, description="null: continuous; else values low, low + step, ... up to high")
    log: bool = Field(False, description="sample on a log scale, e.g. learning rates (not with step)")

    def optuna(self) -> od.FloatDistribution:
        return od.FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: Any, name: str) -> float:
        value = trial.suggest_float(name, self.low, self.high, step=self.step, log=self.log)
        return float(f"{value:.12g}") if self.step is not None else value  # 0.15, not 0.15000000000000002


Distribution = Annotated[Union[Categorical, IntRange, FloatRange], Field(discriminator="type")]
TAGS = tuple(get_args(kind.model_fields["type"].annotation)[0] for kind in get_args(get_args(Distribution)[0]))

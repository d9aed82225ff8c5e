"""The search space at work: checking it before Ray starts, sampling it with Optuna, applying samples.

* :func:`search_space_problems` checks every key path and ``when`` reference
  against the schema, and every value a distribution can take (categorical
  choices, range bounds) by applying it to the config, alone and in pairs with
  the other keys' values, so a bad choice fails here, naming its index, and not
  in trial 17.
* :class:`DefineByRun` is the define-by-run function for Ray Tune's
  ``OptunaSearch(space=...)``: it returns the sampled values as a flat dict of
  dotted key paths (``{"method.lora.r": 16, ...}``), which becomes each trial's
  Tune ``config``. It is a picklable object, since Tune pickles its searcher.
* :func:`apply_sample` turns that flat dict back into a validated
  :class:`~flare_ray.experiment.config.ExperimentConfig` inside the trial.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any, Mapping

from pydantic import ValidationError

from .config import ExperimentConfig, SamplerSpec
from .distributions import Categorical
from .errors import ExperimentConfigError, Problem, format_path, problems_from_validation_error
from .schema import get_path, keys_at, set_path, split_key

# Keys that stay fixed for a whole search, and why.
FIXED_KEYS = {
    "name": "it names the sweep",
    "storage_path": "all trials of a sweep share one storage",
    "search": "the search settings cannot be searched",
    "tracking": "all trials of a sweep log to one MLflow experiment",
    "scaling": "resources per trial are fixed for the whole search",
    "task.name": "the metric depends on it; run one search per task",
    "task.languages": "one search runs per target language",
    "stage1": "stage 1 is trained once for all trials of a sweep",
    "model.stage1": "stage 1 is trained once for all trials of a sweep",
}
PAIR_CHECK_LIMIT = 4000  # most value pairs tried before the search starts


def _fixed_reason(parts: tuple[str, ...]) -> str | None:
    for n in range(len(parts), 0, -1):
        reason = FIXED_KEYS.get(".".join(parts[:n]))
        if reason:
            return reason
    return None


def _config_value(config: ExperimentConfig, key: str) -> Any:
    try:
        return get_path(config, key.split("."))
    except (KeyError, AttributeError):
        return None


# -- applying samples ------------------------------------------------------------------------------
def _apply(data: dict[str, Any], sample: Mapping[str, Any]) -> ExperimentConfig:
    data = copy.deepcopy(data)
    for key, value in sample.items():
        set_path(data, split_key(ExperimentConfig, key), copy.deepcopy(value))
    return ExperimentConfig.model_validate(data)


def _sample_problems(data: dict[str, Any], sample: Mapping[str, Any]) -> list[Problem]:
    """What is wrong with the config that the sample gives (empty: it is valid)."""
    try:
        _apply(data, sample)
    except ValidationError as err:
        return problems_from_validation_error(err, lambda loc: keys_at(ExperimentConfig, loc))
    except ValueError as err:  # a key path that does not exist
        return [Problem((), str(err))]
    return []


def _invalid(data: dict[str, Any], sample: Mapping[str, Any]) -> str | None:
    """None if the sample gives a valid config, else what is wrong (one line)."""
    problems = _sample_problems(data, sample)
    return "; ".join(f"{format_path(p.path)}: {p.message}".lstrip(": ") for p in problems) or None


def apply_sample(config: ExperimentConfig, sample: Mapping[str, Any]) -> ExperimentConfig:
    """A new config with the sampled ``{dotted.key: value}`` written in, validated.

    Raises :class:`ExperimentConfigError` naming the sample if the result is invalid.
    """
    data = config.model_dump()
    problems = _sample_problems(data, sample)
    if problems:
        raise ExperimentConfigError(f"{config.source or '<config>'} with sample {dict(sample)!r}", problems)
    new = _apply(data, sample)
    new._source = config.source
    return new


# -- sampling --------------------------------------------------------------------------------------
class DefineByRun:
    """Optuna define-by-run function of an experiment's search space (``OptunaSearch(space=DefineByRun(config))``).

    Calling it with an Optuna trial samples each key in the order of
    ``search.space``, skipping keys whose ``when`` does not hold (they keep the
    config's value), and returns ``{dotted.key: value}`` of the sampled keys.
    """

    def __init__(self, config: ExperimentConfig) -> None:
        self.space = dict(config.search.space)
        refs = {ref for dist in self.space.values() for ref in dist.when}
        self.fixed = {ref: _config_value(config, ref) for ref in refs}  # values of keys not (yet) sampled

    def __call__(self, trial: Any) -> dict[str, Any]:
        values, sampled = dict(self.fixed), {}
        for key, dist in self.space.items():
            if dist.when and not dist.holds(values):
                continue
            values[key] = sampled[key] = dist.suggest(trial, key)
        return sampled


def make_define_by_run(config: ExperimentConfig) -> DefineByRun:
    """The define-by-run function for ``ray.tune.search.optuna.OptunaSearch(space=...)``."""
    return DefineByRun(config)


def build_sampler(spec: SamplerSpec):
    """The Optuna sampler of ``search.sampler``."""
    import optuna

    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.n_startup_trials)


# -- checking before the search --------------------------------------------------------------------
def search_space_problems(config: ExperimentConfig) -> list[Problem]:
    """Everything wrong with ``search.space`` (empty: every key and value is usable)."""
    problems = _structure_problems(config)
    if problems:
        return problems
    data = config.model_dump()
    problems = _value_problems(config, data)
    return problems or _pair_problems(config, data)


def _structure_problems(config: ExperimentConfig) -> list[Problem]:
    space, order = config.search.space, list(config.search.space)
    problems: list[Problem] = []
    for key, dist in space.items():
        where = ("search", "space", key)
        try:
            parts = split_key(ExperimentConfig, key)
        except ValueError as err:
            problems.append(Problem(where, str(err)))
            continue
        reason = _fixed_reason(parts)
        if reason:
            problems.append(Problem(where, f"{key!r} cannot be searched: {reason}"))
        elif config.method.kind == "lora" and "method.kind" not in space and parts[:2] == ("method", "flare"):
            problems.append(
                Problem(where, "method.kind is 'lora' (plain LoRA), which does not fuse: method.flare is unused")
            )
        for ref in dist.when:
            at = where + ("when", ref)
            if ref == key:
                problems.append(Problem(at, "a key cannot be conditioned on itself"))
            elif ref in space:
                if order.index(ref) > order.index(key):
                    problems.append(Problem(at, f"{ref!r} is sampled after {key!r}; list it earlier in search.space"))
                elif isinstance(space[ref], Categorical):
                    never = [v for v in dist.condition_values(ref) if v not in space[ref].values]
                    if never:
                        problems.append(Problem(at, f"{never} never sampled; expected values among {space[ref].values}"))
            else:
                try:
                    split_key(ExperimentConfig, ref)
                except ValueError as err:
                    problems.append(Problem(at, f"unknown key in when: {err}"))
    return problems


def _conditions(config: ExperimentConfig, keys: list[str]) -> dict[str, Any] | None:
    """Values that make the ``when`` of these keys hold (None: they cannot hold together)."""
    out: dict[str, Any] = {}
    for key in keys:
        dist = config.search.space[key]
        for ref in dist.when:
            options = dist.condition_values(ref)
            if ref in out and out[ref] not in options:
                return None
            if ref in keys and ref not in out:  # the pair itself sets it; checked by the caller
                continue
            out.setdefault(ref, options[0])
    return out


def _value_problems(config: ExperimentConfig, data: dict[str, Any]) -> list[Problem]:
    problems = []
    for key, dist in config.search.space.items():
        base = _conditions(config, [key]) or {}
        for sub, value in dist.candidates():
            problem = _invalid(data, {**base, key: value})
            if problem:
                problems.append(Problem(("search", "space", key) + sub, f"{value!r} gives an invalid config: {problem}"))
                break  # one per key: the first bad value
    return problems


def _pair_problems(config: ExperimentConfig, data: dict[str, Any]) -> list[Problem]:
    space = config.search.space
    problems, tried = [], 0
    for k1, k2 in itertools.combinations(space, 2):
        for (_, v1), (_, v2) in itertools.product(space[k1].candidates(), space[k2].candidates()):
            if tried >= PAIR_CHECK_LIMIT:
                return problems
            if k1 in space[k2].when and v1 not in space[k2].condition_values(k1):
                continue  # k2 is not sampled with this value of k1
            base = _conditions(config, [k1, k2])
            if base is None:
                continue
            tried += 1
            problem = _invalid(data, {**base, k1: v1, k2: v2})
            if problem:
                problems.append(
                    Problem(("search", "space"), f"{k1} = {v1!r} with {k2} = {v2!r} gives an invalid config: {problem}")
                )
                break
    return problems

"""The search space at work: :func:`search_space_problems` applies every value a distribution can take
(choices, bounds) to the config, alone and in pairs, and every cell of the grid, before Ray starts;
:class:`DefineByRun` samples it for ``OptunaSearch(space=...)`` as ``{dotted.key: value}`` (a trial's Tune
config); :func:`apply_sample` writes a sample into the config, the trial's one validation.

Checking the space validates the sections a sample changes, each distinct section once
(:class:`SampleCheck`), and the whole config only for samples that change what the checks across sections
read (:attr:`ExperimentConfig.ACROSS_KEYS`): a handful of validations, not one per value and pair."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any, Mapping

from pydantic import BaseModel, ValidationError

from flare_ray.configfile import Problem, format_path, get_path, set_path
from flare_ray.configfile import problems_of as section_problems

from .config import ExperimentConfig, SamplerSpec
from .distributions import Categorical
from .errors import ExperimentConfigError, problems_of
from .training import method_reads

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


def apply_sample(config: ExperimentConfig, sample: Mapping[str, Any]) -> ExperimentConfig:
    """A new config with the sampled ``{dotted.key: value}`` written in, validated once.

    Raises :class:`ExperimentConfigError` naming the sample if the result is invalid.
    """
    data = config.model_dump()
    try:
        for key, value in sample.items():
            set_path(data, key.split("."), copy.deepcopy(value))
        new = ExperimentConfig.model_validate(data)
    except ValidationError as err:
        raise ExperimentConfigError(f"{config.source or '<config>'} with sample {dict(sample)!r}", problems_of(err))
    except ValueError as err:  # a key path through a value
        raise ExperimentConfigError(
            f"{config.source or '<config>'} with sample {dict(sample)!r}", [Problem((), str(err))]
        )
    new._source = config.source
    return new


class DefineByRun:
    """Samples each key in the order of ``search.space``, skipping keys whose ``when`` does not hold
    (they keep the config's value). A picklable object: Tune pickles its searcher."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.space = dict(config.search.space)
        self.fixed = {ref: config_value(config, ref) for d in self.space.values() for ref in d.when}

    def __call__(self, trial: Any) -> dict[str, Any]:
        values, sampled = dict(self.fixed), {}
        for key, dist in self.space.items():
            if dist.holds(values):
                values[key] = sampled[key] = dist.suggest(trial, key)
        return sampled


def build_sampler(spec: SamplerSpec):
    """The Optuna sampler of ``search.sampler``."""
    import optuna

    return optuna.samplers.TPESampler(seed=spec.seed, n_startup_trials=spec.n_startup_trials)


def config_value(config: ExperimentConfig, key: str) -> Any:
    """The value of a dotted key in the config (as YAML would write it); None if absent."""
    try:
        return get_path(config.model_dump(mode="json"), key.split("."))
    except KeyError:
        return None


# -- checking before the search --------------------------------------------------------------------
def search_space_problems(config: ExperimentConfig) -> list[Problem]:
    """Everything wrong with ``search.space`` and ``search.grid`` (empty: every key and value is usable, alone
    and in pairs, and every cell of the grid)."""
    check = SampleCheck(config)
    problems = _structure_problems(config, check)
    return (
        problems
        or _value_problems(config, check)
        or _pair_problems(config, check)
        or _cell_problems(config, check)
        or _ablation_problems(config, check)
    )


class SampleCheck:
    """What is wrong with a config once a sample (``{dotted.key: value}``) is written in: the same problems,
    with the same key paths, as :func:`apply_sample` would raise, found by validating only the top-level
    sections the sample changes (each distinct section content once) and, where the sample changes a key the
    checks across sections read (``ExperimentConfig.ACROSS_KEYS``) or no section of its own, the whole config."""

    def __init__(self, config: ExperimentConfig) -> None:
        self.config, self.base = config, config.model_dump()
        self._sections: dict[tuple[str, str], list[Problem]] = {}
        own = ExperimentConfig.__pydantic_decorators__.field_validators.values()
        checked_alone = {name for d in own for name in d.info.fields}  # sections with a check of ExperimentConfig's
        self._alone = {
            name: f.annotation
            for name, f in ExperimentConfig.model_fields.items()
            if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel) and name not in checked_alone
        }

    def problems(self, sample: Mapping[str, Any]) -> list[Problem]:
        """Empty: the sample gives a valid config."""
        across = ExperimentConfig.ACROSS_KEYS
        heads = list(dict.fromkeys(key.split(".")[0] for key in sample))
        if any(_overlap(key, a) for key in sample for a in across) or any(h not in self._alone for h in heads):
            try:
                apply_sample(self.config, sample)
            except ExperimentConfigError as err:
                return err.problems
            return []
        data = {head: copy.deepcopy(self.base[head]) for head in heads}
        try:
            for key, value in sample.items():
                set_path(data, key.split("."), copy.deepcopy(value))
        except ValueError as err:  # a key path through a value
            return [Problem((), str(err))]
        return [p for head in self._alone if head in data for p in self._section(head, data[head])]

    def section_problems(self, head: str, sample: Mapping[str, Any]) -> list[Problem]:
        """What is wrong with the section ``head`` on its own (one of :attr:`alone`) once ``sample``, keys
        under ``head``, is written in; :meth:`problems` of a sample that changes no key the checks across
        sections read is these of each section it changes, in the order of the sections."""
        data = {head: copy.deepcopy(self.base[head])}
        try:
            for key, value in sample.items():
                set_path(data, key.split("."), copy.deepcopy(value))
        except ValueError as err:  # a key path through a value
            return [Problem((), str(err))]
        return self._section(head, data[head])

    @property
    def alone(self) -> set[str]:
        """The sections checked on their own (no check of ``ExperimentConfig``'s own reads them alone)."""
        return set(self._alone)

    def message(self, sample: Mapping[str, Any]) -> str | None:
        """The problems of :meth:`problems` as one line; None: the sample gives a valid config."""
        problems = self.problems(sample)
        return "; ".join(f"{format_path(p.path)}: {p.message}".lstrip(": ") for p in problems) or None

    def _section(self, head: str, content: Any) -> list[Problem]:
        key = (head, json.dumps(content, sort_keys=True, default=repr))
        if key not in self._sections:
            model = self._alone[head]
            try:
                model.model_validate(content)
                self._sections[key] = []
            except ValidationError as err:
                self._sections[key] = section_problems(err, model, (head,))
        return [copy.copy(p) for p in self._sections[key]]


def _overlap(key: str, other: str) -> bool:
    """Does one dotted key path lie in (or hold) the other?"""
    return key == other or key.startswith(other + ".") or other.startswith(key + ".")


def _searched(config: ExperimentConfig) -> dict[str, Any]:
    """The grid's keys (as categorical choices) and the space's, in that order: every key a trial may vary."""
    grid = {key: Categorical(type="categorical", values=values) for key, values in config.search.grid.items()}
    return {**grid, **config.search.space}


def _where(config: ExperimentConfig, key: str) -> tuple:
    return ("search", "grid" if key in config.search.grid else "space", key)


def _structure_problems(config: ExperimentConfig, check: SampleCheck) -> list[Problem]:
    space, problems = _searched(config), []
    order = list(space)
    for key, dist in space.items():
        where, parts = _where(config, key), key.split(".")
        reason = _fixed(key)
        if reason:
            problems.append(Problem(where, f"{key!r} cannot be searched: {reason}"))
        elif (
            config.method.kind not in ("flare", "flare_mt")
            and "method.kind" not in space
            and "method.kind" not in config.search.cell_keys
            and parts[:2] == ["method", "flare"]
        ):
            problems.append(Problem(where, f"method.kind is {config.method.kind!r}, which does not use method.flare"))
        for ref in dist.when:
            at = where + ("when", ref)
            if ref == key:
                problems.append(Problem(at, "a key cannot be conditioned on itself"))
            elif ref in space and order.index(ref) > order.index(key):
                problems.append(Problem(at, f"{ref!r} is sampled after {key!r}; list it earlier in search.space"))
            elif ref in space and isinstance(space[ref], Categorical):
                never = [v for v in dist.condition_values(ref) if v not in space[ref].values]
                if never:
                    problems.append(Problem(at, f"{never} never sampled; expected values among {space[ref].values}"))
            elif ref not in space and check.message({ref: config_value(config, ref)}):  # no such key
                problems.append(Problem(at, f"unknown key in when: {check.message({ref: None})}"))
    return problems


def _fixed(key: str) -> str | None:
    """Why a key stays fixed for a whole search (:data:`FIXED_KEYS`, its own or a section's); None: it may vary."""
    parts = key.split(".")
    return next(
        (FIXED_KEYS[".".join(parts[:n])] for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in FIXED_KEYS),
        None,
    )


def _conditions(space: dict[str, Any], keys: list[str]) -> dict[str, Any] | None:
    """Values that make the ``when`` of these keys hold (None: they cannot hold together); ``space``: the
    searched keys (:func:`_searched`)."""
    out: dict[str, Any] = {}
    for key in keys:
        dist = space[key]
        for ref in dist.when:
            options = dist.condition_values(ref)
            if ref in out and out[ref] not in options:
                return None
            if ref not in keys:  # a key of the pair sets it itself
                out.setdefault(ref, options[0])
    return out


def _value_problems(config: ExperimentConfig, check: SampleCheck) -> list[Problem]:
    problems, space = [], _searched(config)
    for key, dist in space.items():
        base = _conditions(space, [key]) or {}
        for i, value in enumerate(dist.candidates()):
            problem = check.message({**base, key: value})
            if problem:
                sub = ("values", i) if isinstance(dist, Categorical) else (("low",), ("high",), ())[i]
                sub = (i,) if key in config.search.grid else sub
                problems.append(Problem(_where(config, key) + sub, f"{value!r} gives an invalid config: {problem}"))
                break  # one per key: the first bad value
    return problems


def _pair_problems(config: ExperimentConfig, check: SampleCheck) -> list[Problem]:
    space, problems = _searched(config), []
    pairs = (
        (k1, k2, v1, v2)
        for k1, k2 in itertools.combinations(space, 2)
        for v1, v2 in itertools.product(space[k1].candidates(), space[k2].candidates())
        if not (k1 in space[k2].when and v1 not in space[k2].condition_values(k1))
    )
    failed: set[tuple[str, str]] = set()
    for k1, k2, v1, v2 in itertools.islice(pairs, PAIR_CHECK_LIMIT):
        base = _conditions(space, [k1, k2])
        problem = None if base is None or (k1, k2) in failed else check.message({**base, k1: v1, k2: v2})
        if problem:
            failed.add((k1, k2))
            problems.append(
                Problem(("search", "space"), f"{k1} = {v1!r} with {k2} = {v2!r} gives an invalid config: {problem}")
            )
    return problems


def _cell_problems(config: ExperimentConfig, check: SampleCheck) -> list[Problem]:
    """The first grid cell that gives an invalid config (with at most two keys the pairs were each a cell).

    Linear in the cells, with a validation per distinct section content rather than one per cell: a cell is
    valid when each section it changes is valid on its own (:meth:`SampleCheck.section_problems`) and, where
    it changes keys the checks across sections read (``ExperimentConfig.ACROSS_KEYS``), a cell with the same
    values of those keys was valid as a whole. Only a cell that may be invalid is validated as a whole (its
    message is :meth:`SampleCheck.message`'s)."""
    grid = config.search.grid
    if len(grid) <= 2:
        return []
    keys, heads = list(grid), [key.split(".")[0] for key in grid]
    if not set(heads) <= check.alone:  # (search keys are refused before this)
        return _first_invalid_cell(grid, itertools.product(*(range(len(v)) for v in grid.values())), check)
    by_head = {head: [i for i, h in enumerate(heads) if h == head] for head in dict.fromkeys(heads)}
    across = [i for i, key in enumerate(keys) if any(_overlap(key, a) for a in ExperimentConfig.ACROSS_KEYS)]
    sections: dict[tuple, bool] = {}  # (head, positions of its keys' values) -> valid on its own
    whole: set[tuple[int, ...]] = set()  # positions of the across keys' values of a cell valid as a whole

    def alone(head: str, at: tuple[int, ...]) -> bool:
        known = (head, *(at[i] for i in by_head[head]))
        if known not in sections:
            sample = {keys[i]: grid[keys[i]][at[i]] for i in by_head[head]}
            sections[known] = not check.section_problems(head, sample)
        return sections[known]

    for at in itertools.product(*(range(len(v)) for v in grid.values())):
        if all(alone(head, at) for head in by_head) and (not across or tuple(at[i] for i in across) in whole):
            continue  # valid: each section on its own, and as a whole for these values of the across keys
        problem = _first_invalid_cell(grid, [at], check)
        if problem:
            return problem
        whole.add(tuple(at[i] for i in across))
    return []


def _first_invalid_cell(grid: dict[str, list[Any]], cells, check: SampleCheck) -> list[Problem]:
    """The problem of the first of ``cells`` (positions of the grid's values) that gives an invalid config."""
    for at in cells:
        cell = {key: values[i] for (key, values), i in zip(grid.items(), at)}
        problem = check.message(cell)
        if problem:
            where = ", ".join(f"{k} = {v!r}" for k, v in cell.items())
            return [Problem(("search", "grid"), f"the cell {where} gives an invalid config: {problem}")]
    return []


def _ablation_problems(config: ExperimentConfig, check: SampleCheck) -> list[Problem]:
    """What is wrong with ``search.ablation``: a key fixed for a whole search, a baseline that gives an invalid
    config, a key of ``vary`` the baseline's method does not read (every arm of it would be the baseline), an
    arm that gives an invalid config, and with a grid, the first arm and cell that together give one (at most
    :data:`PAIR_CHECK_LIMIT` of them are tried). One problem: the first found."""
    ablation = config.search.ablation
    if ablation is None:
        return []
    at = ("search", "ablation")
    for key in ablation.keys:
        reason = _fixed(key)
        if reason:
            where = at + ("vary" if key in ablation.vary else "baseline", key)
            return [Problem(where, f"{key!r} cannot be ablated: {reason}")]
    problem = check.message(ablation.baseline)
    if problem:
        return [Problem(at + ("baseline",), f"{ablation.baseline!r} gives an invalid config: {problem}")]
    kind = ablation.baseline.get("method.kind", config.method.kind)
    for key, values in ablation.vary.items():
        if key != "method.kind" and not method_reads(kind, key):
            return [
                Problem(
                    at + ("vary", key),
                    f"the baseline's method ({kind!r}) does not read {key}: each arm of it would be the baseline; "
                    "expected keys its method reads",
                )
            ]
        for i, value in enumerate(values):
            problem = check.message({**ablation.baseline, key: value})
            if problem:
                return [Problem(at + ("vary", key, i), f"{value!r} gives an invalid config: {problem}")]
    grid = config.search.grid
    cells = itertools.product(ablation.arms(), itertools.product(*grid.values()))
    for (name, arm), values in itertools.islice(cells, PAIR_CHECK_LIMIT) if grid else []:
        cell = {**arm, **dict(zip(grid, values))}
        problem = check.message(cell)
        if problem:
            where = ", ".join(f"{k} = {v!r}" for k, v in zip(grid, values))
            return [Problem(at, f"the arm {name} in the grid's cell {where} gives an invalid config: {problem}")]
    return []

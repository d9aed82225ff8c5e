"""What a sweep runs: one Tune search (a ``Tuner``) per target language, and with a grid and a space, per
language and grid cell. Each search keeps its own searcher state, scheduler and experiment folder.

* **grid, no space**: one search per language over every cell of the grid, each exactly once per seed
  (:class:`GridCells`: Ray Tune's grid search, one trial at a time); an **ablation** (``search.ablation``) is
  cells too: its baseline and arms (in every cell of a grid given with it), :func:`~.plan.search_cells`;
* **space** (TPE): ``num_samples`` configurations from Optuna, each run once per seed (Ray Tune's
  ``Repeater``, which reports the mean over the seeds to Optuna); with a grid, every cell is a
  search of its own with its own Optuna study, the cell's values fixed in its config;
* **neither**: ``num_samples`` runs of the fixed config (per seed).
"""

from __future__ import annotations

import copy
import json
import os
import uuid
from typing import Any

import ray.tune
from ray.tune.experiment.config_parser import _create_trial_from_spec
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Repeater, Searcher, SearchGenerator
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.repeater import TRIAL_INDEX, _TrialGroup
from ray.tune.search.variant_generator import _resolve_nested_dict, format_vars
from ray.tune.utils.util import flatten_dict, merge_dicts

from flare_ray.configfile import get_path, set_path
from flare_ray.experiment import SCHEMA_VERSION, DefineByRun, build_sampler
from flare_ray.experiment.config import AblationSpec
from flare_ray.storage import join
from flare_ray.tracking.mlflow_runs import (
    ARM_TAG,
    CELL_TAG,
    CONFIGURATION_TAG,
    METHOD_TAG,
    SCHEMA_TAG,
    SEED_REASON_TAG,
    SEED_TAG,
)

# What a sweep runs is planned without Ray (the dry run shows it): flare_ray.search.plan.
from .estimate import trial_slots  # the cost estimate lays the trials onto the same slots
from .plan import Search, grid_cells, plan_searches, search_cells  # noqa: F401 - part of this module's interface

GRID_CELL = "grid_cell"  # the Tune config key of a grid search's cell (its key paths and values)
SEED_REASON = "seed_reason"  # with adaptive seeds, the Tune config key of why a trial runs (flare_ray.search.seeding)


class SeedRepeater(Repeater):
    """Ray Tune's ``Repeater`` (one configuration, every seed) that also saves its own groups with the
    searcher's state, so that a resumed search knows which seeds of a configuration are still due. Its groups
    are saved as JSON (``<state>.groups``): nothing the project reads back is unpickled."""

    def save(self, checkpoint_path: str) -> None:
        super().save(checkpoint_path)
        with open(checkpoint_path + ".groups", "w") as f:
            json.dump(self.groups_state(), f, default=_plain)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if os.path.exists(checkpoint_path + ".groups"):
            with open(checkpoint_path + ".groups") as f:
                self.set_groups_state(json.load(f))

    def groups_state(self) -> dict[str, Any]:
        """The groups (each configuration, its trials and their scores) as JSON: trial ids name the groups."""
        groups = self._groups
        return {
            "groups": [
                {"primary": g.primary_trial_id, "config": g.config, "trials": g._trials, "max_trials": g.max_trials}
                for g in groups
            ],
            "trial_to_group": {t: groups.index(g) for t, g in self._trial_id_to_group.items()},
            "current": groups.index(self._current_group) if self._current_group is not None else None,
        }

    def set_groups_state(self, state: dict[str, Any]) -> None:
        groups = []
        for saved in state["groups"]:
            group = _TrialGroup(saved["primary"], saved["config"], max_trials=saved["max_trials"])
            group._trials = dict(saved["trials"])
            groups.append(group)
        self._groups = groups
        self._trial_id_to_group = {t: groups[i] for t, i in state["trial_to_group"].items()}
        self._current_group = groups[state["current"]] if state["current"] is not None else None


def _plain(value: Any) -> Any:
    """A numpy scalar (a score, an Optuna value) as the Python number JSON writes."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable: {value!r}")


class GridCells(Searcher):
    """Ray Tune's grid search over a search's cells (and ``search.seeds``) as a searcher: the same trial
    configs (``{GRID_CELL: cell, "training.seed": seed}``) in the same order (every cell with the first seed,
    then with the next), made as Tune asks for them. Tune's own grid search makes every trial before the first
    starts, each from a copy of the whole grid: time quadratic in the cells (minutes for 10,000), in one step
    of its loop, which Ctrl-C cannot cut short. Its state, saved with the search's, is how many it made (JSON,
    in ``searcher-state-<session>.json``: nothing the project reads back is unpickled)."""

    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def __init__(self, cells: list[dict[str, Any]], seeds: list[int] | None = None) -> None:
        super().__init__()
        self.cells, self.seeds, self.made = cells, list(seeds or []), 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the configs are the grid's; the scheduler has the metric

    def suggest(self, trial_id: str) -> dict[str, Any] | str:
        if self.made >= len(self.cells) * max(len(self.seeds), 1):
            return Searcher.FINISHED
        seed, cell = divmod(self.made, len(self.cells))
        self.made += 1
        config: dict[str, Any] = {GRID_CELL: copy.deepcopy(self.cells[cell])}
        if self.seeds:
            config["training.seed"] = self.seeds[seed]
        return config

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass  # a grid learns nothing from results

    def get_state(self) -> dict[str, Any]:
        return {"made": self.made}

    def set_state(self, state: dict[str, Any]) -> None:
        self.made = state["made"]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))


class InOrder(SearchGenerator):
    """Tune's ``SearchGenerator`` (the trials of a searcher) naming its trials in the order it makes them,
    ``<prefix>_00000``, ``<prefix>_00001``, ... as Tune's grid search does (its own names are random): the
    report reads a search's trials in the order of their ids. Otherwise Tune's own (Ray 2.60)."""

    def __init__(self, searcher: Searcher) -> None:
        super().__init__(searcher)
        self._prefix = uuid.uuid4().hex[:5] + "_"

    def create_trial_if_possible(self, experiment_spec: dict[str, Any]):
        trial_id = f"{self._prefix}{self._counter:05d}"
        suggested = self.searcher.suggest(trial_id)
        if suggested == Searcher.FINISHED:
            self._finished = True
            return None
        if suggested is None:
            return None
        spec = copy.deepcopy(experiment_spec)
        spec["config"] = merge_dicts(spec["config"], copy.deepcopy(suggested))
        self._counter += 1
        shown = {k: v for k, v in spec["config"].items() if k != SEED_REASON}  # a sentence: not in folder names
        tag = f"{self._counter}_{format_vars(_resolve_nested_dict(shown))}"
        return _create_trial_from_spec(
            spec, self._parser, evaluated_params=flatten_dict(suggested), experiment_tag=tag, trial_id=trial_id
        )

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), "prefix": self._prefix}

    def set_state(self, state: dict[str, Any]) -> None:
        self._prefix = state.pop("prefix", self._prefix)
        super().set_state(state)


def seeded(sample: dict[str, Any], seeds: list[int | None]) -> dict[str, Any]:
    """A trial's Tune config as key paths: the Repeater's index (``__trial_index__``) becomes ``training.seed``."""
    sample = dict(sample)
    sample.pop(SEED_REASON, None)
    sample.update(sample.pop(GRID_CELL, None) or {})
    index = sample.pop(TRIAL_INDEX, None)
    if index is not None and seeds[index] is not None:
        sample["training.seed"] = seeds[index]
    return sample


def describe_trial(
    sample: dict[str, Any],
    *,
    base: dict[str, Any],
    cell: dict[str, Any],
    grid: list[str],
    seeds: list[int | None],
    ablation: AblationSpec | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """A trial's whole resolved config (``base``, the search's config as JSON, with the trial's sample written
    in; as nested params) and its MLflow tags: method, seed, cell, configuration, schema version, and with an
    ``ablation`` its arm, with adaptive seeds why it ran. ``grid``: the keys a cell sets (the grid's and the
    ablation's)."""
    reason = sample.get(SEED_REASON)
    sample = seeded(sample, seeds)
    data = copy.deepcopy(base)
    for key, value in sample.items():
        set_path(data, key.split("."), copy.deepcopy(value))
    cell = {**cell, **{k: sample[k] for k in grid if k in sample}}
    tags = {
        METHOD_TAG: str(get_path(data, ["method", "kind"])),
        SEED_TAG: str(get_path(data, ["training", "seed"])),
        CELL_TAG: json.dumps(cell, sort_keys=True, default=str),
        CONFIGURATION_TAG: json.dumps(configuration(sample, cell), sort_keys=True, default=str),
        SCHEMA_TAG: str(SCHEMA_VERSION),
    }
    if ablation is not None:
        tags[ARM_TAG] = ablation.arm_of(cell)
    if reason:
        tags[SEED_REASON_TAG] = str(reason)
    return data, tags


def configuration(sample: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """What a trial varied besides its seed: the grid cell and the sampled keys."""
    return {k: v for k, v in {**cell, **sample}.items() if k != "training.seed"}


def concurrency(search: Search, resources: dict[str, float], searches: int = 1) -> int | None:
    """How many trials of ``search`` run at once: ``search.max_concurrent_trials``, or where that is null as
    many Train runs (``scaling.num_workers`` workers each) as the cluster's ``resources`` hold, shared by the
    ``searches`` that run together. (Tune alone would start every trial at once: a trial's own actor only
    waits on its Train run and asks for almost nothing.) None: the trials ask for no resource."""
    return trial_slots(search.config, resources, searches)


def tune_config(search: Search, max_concurrent: int | None = None) -> tuple[ray.tune.TuneConfig, dict[str, Any]]:
    """The search algorithm, scheduler and budget of a search, and its ``param_space``; ``max_concurrent``:
    the trials at once (:func:`concurrency`)."""
    config, spec = search.config, search.config.search
    seeds = spec.seed_list
    param_space: dict[str, Any] = {}
    searcher = None
    if spec.space:
        searcher = OptunaSearch(
            space=DefineByRun(config), sampler=build_sampler(spec.sampler), metric=spec.metric, mode=spec.mode
        )
        if spec.seeds:
            searcher = SeedRepeater(searcher, repeat=len(seeds), set_index=True)
        if max_concurrent:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
        num_samples = spec.num_samples * len(seeds)
    elif spec.cells:  # every cell (or arm) once per seed (cells that differ only in what their method ignores are one)
        if spec.adaptive_seeds is not None:  # seeds where they decide something: round by round
            from .seeding import AdaptiveCells

            searcher = AdaptiveCells(
                search_cells(config),
                spec.adaptive_seeds,
                spec.metric,
                spec.mode,
                folder=search_path(search),
                storage_path=config.storage_path,
                ablation=search.ablation,
            )
        else:
            searcher = GridCells(search_cells(config), spec.seeds)
        if max_concurrent:
            searcher = ConcurrencyLimiter(searcher, max_concurrent=max_concurrent)
        searcher = InOrder(searcher)
        num_samples = search.expected_trials
    else:
        if spec.seeds:
            param_space["training.seed"] = ray.tune.grid_search(list(spec.seeds))
        num_samples = spec.num_samples
    scheduler = None
    if spec.scheduler is not None:
        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric=spec.metric,
            mode=spec.mode,
            max_t=config.training.epochs + 1,  # +1: the last epoch still reports its test scores
            grace_period=spec.scheduler.grace_period,
            reduction_factor=spec.scheduler.reduction_factor,
        )
    # reuse_actors: a trial's process runs the next trial of its search (imports and the process start are
    # paid once; FLARE's source cache carries over, flare_ray.training.source_cache); Tune starts a new one
    # where the last trial's thread does not end within seconds (ASHA stopped it mid-epoch).
    tune = ray.tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=num_samples,
        max_concurrent_trials=None if searcher else max_concurrent,  # the limiter has it
        reuse_actors=True,
    )
    return tune, param_space


def search_path(search: Search) -> str:
    return join(search.config.storage_path, search.name)

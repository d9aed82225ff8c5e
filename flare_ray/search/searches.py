"""What a sweep runs: one Tune search (a ``Tuner``) per target language, and with a grid and a space, per
language and grid cell. Each search keeps its own searcher state, scheduler and experiment folder.

* **grid, no space**: one search per language over Ray Tune's ``grid_search`` of every grid key (and
  of ``training.seed`` over ``search.seeds``): each cell runs exactly once per seed;
* **space** (TPE): ``num_samples`` configurations from Optuna, each run once per seed (Ray Tune's
  ``Repeater``, which reports the mean over the seeds to Optuna); with a grid, every cell is a
  search of its own with its own Optuna study, the cell's values fixed in its config;
* **neither**: ``num_samples`` runs of the fixed config (per seed).
"""

from __future__ import annotations

import copy
import json
import os
import pickle
from typing import Any

import ray.tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter, Repeater
from ray.tune.search.optuna import OptunaSearch
from ray.tune.search.repeater import TRIAL_INDEX

from flare_ray.configfile import get_path, set_path
from flare_ray.experiment import SCHEMA_VERSION, DefineByRun, build_sampler
from flare_ray.storage import join
from flare_ray.tracking.mlflow_runs import CELL_TAG, CONFIGURATION_TAG, METHOD_TAG, SCHEMA_TAG, SEED_TAG

# What a sweep runs is planned without Ray (the dry run shows it): flare_ray.search.plan.
from .plan import Search, grid_cells, plan_searches  # noqa: F401 - part of this module's interface

GRID_CELL = "grid_cell"  # the Tune config key of a grid search's cell (its key paths and values)


class SeedRepeater(Repeater):
    """Ray Tune's ``Repeater`` (one configuration, every seed) that also saves its own groups with the
    searcher's state, so that a resumed search knows which seeds of a configuration are still due."""

    def save(self, checkpoint_path: str) -> None:
        super().save(checkpoint_path)
        with open(checkpoint_path + ".groups", "wb") as f:
            pickle.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        if os.path.exists(checkpoint_path + ".groups"):
            with open(checkpoint_path + ".groups", "rb") as f:
                self.set_state(pickle.load(f))


def seeded(sample: dict[str, Any], seeds: list[int | None]) -> dict[str, Any]:
    """A trial's Tune config as key paths: the Repeater's index (``__trial_index__``) becomes ``training.seed``."""
    sample = dict(sample)
    sample.update(sample.pop(GRID_CELL, None) or {})
    index = sample.pop(TRIAL_INDEX, None)
    if index is not None and seeds[index] is not None:
        sample["training.seed"] = seeds[index]
    return sample


def describe_trial(
    sample: dict[str, Any], *, base: dict[str, Any], cell: dict[str, Any], grid: list[str], seeds: list[int | None]
) -> tuple[dict[str, Any], dict[str, str]]:
    """A trial's whole resolved config (``base``, the search's config as JSON, with the trial's sample written
    in; as nested params) and its MLflow tags: method, seed, grid cell, configuration, schema version."""
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
    return data, tags


def configuration(sample: dict[str, Any], cell: dict[str, Any]) -> dict[str, Any]:
    """What a trial varied besides its seed: the grid cell and the sampled keys."""
    return {k: v for k, v in {**cell, **sample}.items() if k != "training.seed"}


def concurrency(search: Search, resources: dict[str, float], searches: int = 1) -> int | None:
    """How many trials of ``search`` run at once: ``search.max_concurrent_trials``, or where that is null as
    many Train runs (``scaling.num_workers`` workers each) as the cluster's ``resources`` hold, shared by the
    ``searches`` that run together. (Tune alone would start every trial at once: a trial's own actor only
    waits on its Train run and asks for almost nothing.) None: the trials ask for no resource."""
    spec, scaling = search.config.search, search.config.scaling
    if spec.max_concurrent_trials:
        return spec.max_concurrent_trials
    need = {k: v * scaling.num_workers for k, v in scaling.resources_per_worker().items() if v > 0}
    fits = [int(resources.get(k, 0.0) // v) for k, v in need.items()]
    return max(1, min(fits) // max(searches, 1)) if fits else None


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
    else:
        if spec.grid:  # the cells as one grid axis: cells that differ only in what their method ignores are one
            param_space[GRID_CELL] = ray.tune.grid_search(grid_cells(spec.grid, config.method.kind))
        if spec.seeds:
            param_space["training.seed"] = ray.tune.grid_search(list(spec.seeds))
        num_samples = 1 if spec.grid else spec.num_samples
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

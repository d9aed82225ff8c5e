"""``python -m flare_ray.tune ... --dry-run``: what would run, without starting Ray."""

from __future__ import annotations

import math

import yaml

from flare_ray.experiment import ExperimentConfig
from flare_ray.experiment.distributions import flow
from flare_ray.experiment.space import config_value
from flare_ray.tracking.mlflow_runs import resolve_tracking_uri

from .searches import plan_searches


def space_lines(config: ExperimentConfig) -> list[str]:
    """One line per search-space key: the key, its distribution and its condition."""
    space = config.search.space
    width = max((len(k) for k in space), default=0)
    lines = []
    for key, dist in space.items():
        line = f"{key:<{width}}  {dist.describe()}"
        if dist.when:
            line += "  when " + ", ".join(_condition(ref, dist.condition_values(ref)) for ref in dist.when)
            fixed_false = [
                ref for ref in dist.when
                if ref not in space and config_value(config, ref) not in dist.condition_values(ref)
            ]  # fmt: skip
            if fixed_false:
                line += "  (never sampled: " + ", ".join(f"{r} is fixed to {config_value(config, r)!r}" for r in fixed_false) + ")"
        lines.append(line)
    return lines


def _condition(ref: str, values: list) -> str:
    return f"{ref} = {flow(values[0])}" if len(values) == 1 else f"{ref} in {flow(values)}"


def _budget(config: ExperimentConfig) -> str:
    """How many trials each language runs, and how they are made."""
    search = config.search
    cells = math.prod(len(v) for v in search.grid.values()) if search.grid else 1
    grid = f"grid of {cells} cell(s) ({' x '.join(search.grid)})" if search.grid else ""
    if search.space:
        per = f"{search.num_samples} TPE configuration(s)" + (f" in each cell of a {grid}" if grid else "")
    else:
        per = grid or f"{search.num_samples} run(s) of the fixed config"
    language = config.task.languages[0]
    trials = sum(s.expected_trials for s in plan_searches(config) if s.language == language)
    with_seeds = f" x {len(search.seed_list)} seeds {search.seeds}" if search.seeds else ""
    return f"{per}{with_seeds} = {trials} trials per language"


def dry_run_text(config: ExperimentConfig) -> str:
    """The resolved config (YAML, without the space) and the search space, one line per key."""
    search = config.search
    data = config.model_dump(mode="json")
    data["search"].pop("space")
    try:
        tracking = resolve_tracking_uri(config)
    except ValueError as err:
        tracking = f"<unresolved: {err}>"
    scheduler = (
        f"asha (grace_period {search.scheduler.grace_period}, reduction_factor {search.scheduler.reduction_factor:g}, "
        f"max_t {config.training.epochs} epochs)"
        if search.scheduler
        else "none (every trial runs all epochs)"
    )
    out = [
        f"# experiment {config.name}" + (f" (from {config.source})" if config.source else ""),
        "# resolved config (search.space below):",
        yaml.safe_dump(data, sort_keys=False, width=120).rstrip(),
        "",
        f"# search: {_budget(config)} x {len(config.task.languages)} language(s) {config.task.languages}, "
        f"all languages at once; objective {search.metric} ({search.mode})",
        f"# sampler: {search.sampler.type} (seed {search.sampler.seed}, {search.sampler.n_startup_trials} random "
        "startup trials)" if search.space else "# sampler: none (Ray Tune's grid and seeds)",
        f"# scheduler: {scheduler}",
        f"# concurrency: {search.max_concurrent_trials or 'as many Train runs as the cluster holds at the start, shared by the languages'}; "
        f"{config.scaling.num_workers} worker(s) per trial, {config.scaling.resources_per_worker()} each",
        f"# mlflow: {tracking}, experiment {config.tracking.experiment_name!r}",
        f"# search space ({len(search.space)} key{'s' if len(search.space) != 1 else ''}):",
    ]
    empty = "(empty: the grid says what varies)" if search.grid else "(empty: every trial runs the fixed config)"
    out += [f"  {line}" for line in space_lines(config)] or [f"  {empty}"]
    return "\n".join(out) + "\n"

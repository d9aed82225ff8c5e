"""What a sweep runs, planned without Ray: its searches (:func:`plan_searches`, one per target language, and
with a grid and a space per language and grid cell) and ``python -m flare_ray.tune ... --dry-run``'s text
(:func:`dry_run_text`). Imports neither Ray nor MLflow (nor torch): the dry run is quick."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from flare_ray.experiment import ExperimentConfig, apply_sample
from flare_ray.experiment.distributions import flow
from flare_ray.experiment.space import config_value
from flare_ray.experiment.training import method_reads
from flare_ray.tracking.config import resolve_tracking_uri

from .translation import plan_line


@dataclass
class Search:
    """One Tune search: a target language and, with a grid and a space, one grid cell."""

    language: str
    config: ExperimentConfig  # the experiment, with the cell's values written in
    cell: dict[str, Any] = field(default_factory=dict)  # the grid values this search fixes (grid and space)
    name: str = ""

    @property
    def expected_trials(self) -> int:
        search = self.config.search
        cells = grid_cells(search.grid, self.config.method.kind)
        runs = len(cells) if search.grid and not search.space else search.num_samples
        return runs * len(search.seed_list)


def grid_cells(grid: dict[str, list[Any]], kind: str = "flare") -> list[dict[str, Any]]:
    """Every cell of a grid, ``{key: value}``, in the order Ray Tune's grid search runs them. A key the cell's
    method does not read (``method.flare.*`` in a LoRA cell, :func:`~flare_ray.experiment.training.method_reads`)
    is left out of that cell, and cells that are then the same run once: ``method.kind: [lora, flare]`` with
    ``method.flare.fusion: [add, mul]`` is three cells, not four. ``kind``: the method outside the grid."""
    cells: list[dict[str, Any]] = []
    for values in itertools.product(*grid.values()):
        cell = dict(zip(grid, values))
        method = cell.get("method.kind", kind)
        cell = {key: value for key, value in cell.items() if method_reads(method, key)}
        if cell not in cells:
            cells.append(cell)
    return cells


def _label(cell: dict[str, Any]) -> str:
    text = "_".join(
        f"{key.rsplit('.', 1)[-1]}={json.dumps(value) if not isinstance(value, str) else value}"
        for key, value in cell.items()
    )
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)[:80]


def plan_searches(config: ExperimentConfig) -> list[Search]:
    """Every search of a sweep, in the order they start. With a grid and a space, each cell's config is
    validated once (every language's search of that cell shares it)."""
    if not (config.search.grid and config.search.space):
        return [Search(language, config, {}, f"{config.name}-{language}") for language in config.task.languages]
    cells = [(cell, _cell_config(config, cell)) for cell in grid_cells(config.search.grid, config.method.kind)]
    return [
        Search(language, cell_config, cell, f"{config.name}-{language}-cell{i}-{_label(cell)}")
        for language in config.task.languages
        for i, (cell, cell_config) in enumerate(cells)
    ]


def _cell_config(config: ExperimentConfig, cell: dict[str, Any]) -> ExperimentConfig:
    """A grid cell's experiment (validated once): the cell's values written in, and only the space keys
    its method reads; a cell whose method reads none of them runs once (per seed)."""
    cell_config = apply_sample(config, cell)
    method = cell_config.method.kind
    space = {key: dist for key, dist in config.search.space.items() if method_reads(method, key)}
    if space == config.search.space:
        return cell_config
    update = {"space": space} if space else {"space": {}, "grid": {}, "num_samples": 1}  # its values are written in
    search = cell_config.search.model_copy(update=update)
    return cell_config.model_copy(update={"search": search})


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
                ref
                for ref in dist.when
                if ref not in space and config_value(config, ref) not in dist.condition_values(ref)
            ]
            if fixed_false:
                line += (
                    "  (never sampled: "
                    + ", ".join(f"{r} is fixed to {config_value(config, r)!r}" for r in fixed_false)
                    + ")"
                )
        lines.append(line)
    return lines


def _condition(ref: str, values: list) -> str:
    return f"{ref} = {flow(values[0])}" if len(values) == 1 else f"{ref} in {flow(values)}"


def _budget(config: ExperimentConfig) -> str:
    """How many trials each language runs, and how they are made."""
    search = config.search
    cells = len(grid_cells(search.grid, config.method.kind)) if search.grid else 1
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
        "startup trials)"
        if search.space
        else "# sampler: none (Ray Tune's grid and seeds)",
        f"# scheduler: {scheduler}",
        f"# concurrency: {search.max_concurrent_trials or 'as many Train runs as the cluster holds at the start, shared by the languages'}; "
        f"{config.scaling.num_workers} worker(s) per trial, {config.scaling.resources_per_worker()} each",
        f"# mlflow: {tracking}, experiment {config.tracking.experiment_name!r}",
        f"# search space ({len(search.space)} key{'s' if len(search.space) != 1 else ''}):",
    ]
    empty = "(empty: the grid says what varies)" if search.grid else "(empty: every trial runs the fixed config)"
    out += [f"  {line}" for line in space_lines(config)] or [f"  {empty}"]
    translation = plan_line(config)
    if translation is not None:
        out.insert(out.index("# scheduler: " + scheduler), f"# {translation}")
    return "\n".join(out) + "\n"


def run_plan_text(config: ExperimentConfig, resources: dict[str, float], log) -> str:
    """What the sweep will run, where, and where its records go: printed when it starts."""
    search, scaling = config.search, config.scaling
    languages = config.task.languages
    trials = sum(s.expected_trials for s in plan_searches(config))
    searches = len(plan_searches(config))
    stage1 = " after stage 1 (English)" if config.model.stage1 == "auto" else ""
    where = (
        "in its Tune trial's process"
        if scaling.in_trial_process and not search.worker_max_failures
        else "as a Ray Train run"
    )
    worker = ", ".join(f"{v:g} {k}" for k, v in scaling.resources_per_worker().items() if v)
    cluster = ", ".join(f"{resources.get(k, 0):g} {k}" for k in ("CPU", "GPU"))
    at_once = search.max_concurrent_trials or "as many as fit"
    translation = plan_line(config)
    return "\n".join(
        [
            f"sweep '{config.name}': {config.task.name} {', '.join(languages)}; {_budget(config)} ({trials} in all, "
            f"{searches} search(es)){stage1}; selected on {search.metric}",
            *([f"  {translation}"] if translation else []),
            f"  each trial: {config.model.name_or_path}, {scaling.num_workers} worker(s) of {worker}, trained {where}; "
            f"{at_once} at once on this cluster ({cluster})",
            f"  MLflow: {resolve_tracking_uri(config)} (experiment '{config.tracking.experiment_name}'); storage: "
            f"{config.storage_path}",
            f"  logs: {log} (this command); one file per trial under {log.parent}/<search>/",
            "",
        ]
    )


class Unplaceable(str):
    """Why no trial worker fits on a node (the message); ``fits_a_node_type``: whether a node type that an
    autoscaler can add would hold one."""

    fits_a_node_type: bool = False


def unplaceable(
    config: ExperimentConfig, nodes: list[dict[str, float]], node_types: list[dict[str, float]] | None = None
) -> Unplaceable | None:
    """Why no trial worker of ``config`` fits on any of the cluster's ``nodes`` (their total resources), or
    None when one does. A worker must fit on one node (its CPUs and GPUs); a trial's workers may spread.
    ``node_types``: the resources of the nodes an autoscaler can add (``{}``: unknown, may fit anything)."""
    need = {k: v for k, v in config.scaling.resources_per_worker().items() if v > 0}
    fits = lambda node: all(node.get(k, 0.0) >= v for k, v in need.items())  # noqa: E731
    if not nodes or any(fits(node) for node in nodes):
        return None
    largest = max(nodes, key=lambda node: tuple(node.get(k, 0.0) for k in ("GPU", "CPU")))
    show = lambda resources: ", ".join(f"{resources.get(k, 0.0):g} {k}" for k in ("CPU", "GPU"))  # noqa: E731
    problem = Unplaceable(
        f"a trial's worker asks for {show(need)} (scaling.cpus_per_worker, scaling.gpus_per_worker / use_gpu), "
        f"but the largest of the cluster's {len(nodes)} node(s) has {show(largest)}"
    )
    problem.fits_a_node_type = any(not node_type or fits(node_type) for node_type in node_types or [])
    return problem

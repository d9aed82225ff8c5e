"""What a sweep runs, planned without Ray: its searches (:func:`plan_searches`, one per target language, and
with a grid and a space per language and grid cell) and ``python -m flare_ray.tune ... --dry-run``'s text
(:func:`dry_run_text`). Imports neither Ray nor MLflow (nor torch): the dry run is quick."""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from flare_ray.experiment import ExperimentConfig, apply_sample
from flare_ray.experiment.config import BASELINE_ARM, AblationSpec, arm_name
from flare_ray.experiment.distributions import flow
from flare_ray.experiment.space import config_value
from flare_ray.experiment.training import method_reads
from flare_ray.local_ray import starts_a_local_ray
from flare_ray.secrets import redact
from flare_ray.tracking.config import resolve_tracking_uri

from .translation import plan_line


@dataclass
class Search:
    """One Tune search: a target language and, with a grid (or an ablation) and a space, one cell."""

    language: str
    config: ExperimentConfig  # the experiment, with the cell's values written in
    cell: dict[str, Any] = field(default_factory=dict)  # the values this search fixes (a grid or ablation and a space)
    name: str = ""
    ablation: AblationSpec | None = None  # the sweep's ablation: names each trial's arm

    @cached_property
    def expected_trials(self) -> int:
        """The trials this search runs: each configuration (every cell of the grid or the ablation's arms, or
        each of ``num_samples``) once per seed; with adaptive seeds the most it may run (``max`` per cell)."""
        search = self.config.search
        if search.cells and not search.space:
            return len(search_cells(self.config)) * len(search.seed_list)
        return search.num_samples * len(search.seed_list)


def grid_cells(grid: dict[str, list[Any]], kind: str = "flare") -> list[dict[str, Any]]:
    """Every cell of a grid, ``{key: value}``, in the order Ray Tune's grid search runs them. A key the cell's
    method does not read (``method.flare.*`` in a LoRA cell, :func:`~flare_ray.experiment.training.method_reads`)
    is left out of that cell, and cells that are then the same run once: ``method.kind: [lora, flare]`` with
    ``method.flare.fusion: [add, mul]`` is three cells, not four. ``kind``: the method outside the grid.

    Linear in the cells: a cell is known by the positions of its values in their lists (a key lists no value
    twice, ``SearchSpec``), so two cells are the same exactly when those positions are."""
    keys = list(grid)
    kind_at = keys.index("method.kind") if "method.kind" in grid else None
    methods = grid["method.kind"] if kind_at is not None else [kind]
    reads = [[method_reads(method, key) for key in keys] for method in methods]  # per method.kind value
    cells: list[dict[str, Any]] = []
    seen: set[tuple[int, ...]] = set()
    for at in itertools.product(*(range(len(values)) for values in grid.values())):
        read = reads[at[kind_at] if kind_at is not None else 0]
        known = tuple(i if r else -1 for i, r in zip(at, read))
        if known not in seen:
            seen.add(known)
            cells.append({key: grid[key][i] for key, i, r in zip(keys, at, read) if r})
    return cells


def search_cells(config: ExperimentConfig) -> list[dict[str, Any]]:
    """Every cell the searches of ``config`` run: the grid's (:func:`grid_cells`), or with an ablation
    (``search.ablation``) every arm, the baseline first, in every cell of the grid (none: the arms alone). As in
    :func:`grid_cells`, a key the cell's method does not read is left out of it, and cells then the same run
    once."""
    search = config.search
    if search.ablation is None:
        return grid_cells(search.grid, config.method.kind)
    cells: list[dict[str, Any]] = []
    seen: set[str] = set()
    for _, arm in search.ablation.arms():
        for values in itertools.product(*search.grid.values()):
            cell = {**arm, **dict(zip(search.grid, values))}
            kind = cell.get("method.kind", config.method.kind)
            cell = {key: value for key, value in cell.items() if method_reads(kind, key)}
            known = json.dumps(cell, sort_keys=True, default=str)
            if known not in seen:
                seen.add(known)
                cells.append(cell)
    return cells


def arm_lines(config: ExperimentConfig) -> list[str]:
    """The ablation's arms, one line each: ``baseline: <its values>``, then ``arm: <key>=<value> (vs baseline)``."""
    ablation = config.search.ablation
    if ablation is None:
        return []
    arms = ablation.arms()
    return [f"{BASELINE_ARM}: " + ", ".join(arm_name(k, v) for k, v in arms[0][1].items())] + [
        f"arm: {name} (vs {BASELINE_ARM})" for name, _ in arms[1:]
    ]


def _cell_label(config: ExperimentConfig, cell: dict[str, Any]) -> str:
    """A cell in a search's name: its grid values, and with an ablation its arm (``baseline``, ``fusion=add``)."""
    ablation = config.search.ablation
    if ablation is None:
        return _label(cell)
    arm = ablation.arm_of(cell)
    changed = arm.partition("=")[0]
    shown = {k: v for k, v in cell.items() if k in config.search.grid or (arm != BASELINE_ARM and k == changed)}
    return "_".join(part for part in (BASELINE_ARM if arm == BASELINE_ARM else "", _label(shown)) if part)


def _label(cell: dict[str, Any]) -> str:
    text = "_".join(
        f"{key.rsplit('.', 1)[-1]}={json.dumps(value) if not isinstance(value, str) else value}"
        for key, value in cell.items()
    )
    return re.sub(r"[^A-Za-z0-9_.=-]+", "-", text)[:80]


def plan_searches(config: ExperimentConfig) -> list[Search]:
    """Every search of a sweep, in the order they start. With a grid and a space, each cell's config is
    validated once (every language's search of that cell shares it)."""
    ablation = config.search.ablation
    if not (config.search.cells and config.search.space):
        return [
            Search(language, config, {}, f"{config.name}-{language}", ablation) for language in config.task.languages
        ]
    cells = [(cell, _cell_config(config, cell)) for cell in search_cells(config)]
    return [
        Search(language, cell_config, cell, f"{config.name}-{language}-cell{i}-{_cell_label(config, cell)}", ablation)
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
    update = {"space": space} if space else {"space": {}, "grid": {}, "ablation": None, "num_samples": 1}  # written in
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


@dataclass
class PlanSize:
    """How big a sweep is, counted from its grid's cells without building (and validating) a config per cell:
    what :func:`plan_searches` would give."""

    cells: int  # the grid's cells (or the ablation's arms in them), less those that differ only in what their
    # method ignores (1: neither)
    searches: int  # per target language: one, or one per cell (a grid and a space)
    trials: int  # per target language
    every_cell_samples: bool = True  # (a grid and a space) every cell's method reads a space key: num_samples each

    def total(self, languages: int) -> int:
        """The trials of the whole sweep, of ``languages`` target languages."""
        return self.trials * languages


def plan_size(config: ExperimentConfig) -> PlanSize:
    """The cells, searches and trials of a sweep (per target language), in time linear in the grid's cells."""
    search = config.search
    seeds = len(search.seed_list)
    if not search.cells:
        return PlanSize(1, 1, search.num_samples * seeds)
    cells = search_cells(config)
    if not search.space:
        return PlanSize(len(cells), 1, len(cells) * seeds)
    reads_space = {  # per method: does it read a space key? (a cell that reads none runs once, _cell_config)
        method: any(method_reads(method, key) for key in search.space)
        for method in {cell.get("method.kind", config.method.kind) for cell in cells}
    }
    sampled = sum(reads_space[cell.get("method.kind", config.method.kind)] for cell in cells)
    runs = sampled * search.num_samples + len(cells) - sampled
    return PlanSize(len(cells), len(cells), runs * seeds, sampled == len(cells))


LARGE_SWEEP = 1000  # more trials than this (all languages together): the dry run and the sweep's plan warn


def _count(n: int, what: str) -> str:
    return f"{n:,} {what}{'s' if n != 1 else ''}"


def size_warning(config: ExperimentConfig, size: PlanSize | None = None) -> str | None:
    """A warning naming the trial count and what multiplies it, for a sweep of more than :data:`LARGE_SWEEP`
    trials; None for a smaller one."""
    size = size or plan_size(config)
    search, languages = config.search, len(config.task.languages)
    total = size.total(languages)
    if total <= LARGE_SWEEP:
        return None
    factors = [_count(size.cells, "cell")] if search.cells else []
    if search.space:
        factors.append(("" if size.every_cell_samples else "up to ") + _count(search.num_samples, "configuration"))
    elif not search.cells:
        factors.append(_count(search.num_samples, "run"))
    factors += [_count(len(search.seed_list), "seed"), _count(languages, "language")]
    return (
        f"warning: {total:,} trials ({' x '.join(factors)}), more than {LARGE_SWEEP:,}: check that the grid and "
        "the budget are what you meant"
    )


def _budget(config: ExperimentConfig, size: PlanSize | None = None) -> str:
    """How many trials each language runs, and how they are made."""
    search = config.search
    size = size or plan_size(config)
    grid = f"grid of {size.cells} cell(s) ({' x '.join(search.grid)})" if search.grid else ""
    if search.ablation is not None:  # (1 + its arms), with a grid in each of its cells
        arms = len(search.ablation.arms())
        grid = f"ablation of {arms} arms (the baseline + {arms - 1})"
        if search.grid:
            grid += f" x grid ({' x '.join(search.grid)}) = {size.cells} cell(s)"
    if search.space:
        per = f"{search.num_samples} TPE configuration(s)" + (f" in each cell of {_a(grid)}" if grid else "")
    else:
        per = grid or f"{search.num_samples} run(s) of the fixed config"
    adaptive = search.adaptive_seeds
    if adaptive is not None:  # min seeds per cell, more where a comparison is undecided: a range of trials
        seeds = adaptive.seeds
        return (
            f"{per} x {adaptive.min} to {adaptive.max} seeds per cell (adaptive, seeds {seeds[0]}..{seeds[-1]}) = "
            f"{size.cells * adaptive.min} to {size.trials} trials per language"
        )
    with_seeds = f" x {len(search.seed_list)} seeds {search.seeds}" if search.seeds else ""
    return f"{per}{with_seeds} = {size.trials} trials per language"


def _a(noun: str) -> str:
    return ("an " if noun[:1] in "aeiou" else "a ") + noun


def dry_run_text(config: ExperimentConfig, cost: list[str] | None = None) -> str:
    """The resolved config (YAML, without the space), the search space, one line per key, and what the sweep
    will cost (``cost``: :func:`~flare_ray.search.estimate.cost_lines`; None: its counts alone)."""
    search = config.search
    data = config.model_dump(mode="json")
    data["search"].pop("space")
    try:
        tracking = redact(resolve_tracking_uri(config))
    except ValueError as err:
        tracking = f"<unresolved: {err}>"
    scheduler = (
        f"asha (grace_period {search.scheduler.grace_period}, reduction_factor {search.scheduler.reduction_factor:g}, "
        f"max_t {config.training.epochs} epochs)"
        if search.scheduler
        else "none (every trial runs all epochs)"
    )
    size = plan_size(config)
    warning = size_warning(config, size)
    out = [
        f"# experiment {config.name}" + (f" (from {config.source})" if config.source else ""),
        "# resolved config (search.space below):",
        yaml.safe_dump(data, sort_keys=False, width=120).rstrip(),
        "",
        f"# search: {_budget(config, size)} x {len(config.task.languages)} language(s) {config.task.languages}, "
        f"all languages at once; objective {search.metric} ({search.mode})",
        *([f"# {warning}"] if warning else []),
        *[f"#   {line}" for line in arm_lines(config)],
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
    empty = (
        f"(empty: the {'grid' if search.grid else 'ablation'} says what varies)"
        if search.cells
        else "(empty: every trial runs the fixed config)"
    )
    out += [f"  {line}" for line in space_lines(config)] or [f"  {empty}"]
    translation = plan_line(config)
    if translation is not None:
        out.insert(out.index("# scheduler: " + scheduler), f"# {translation}")
    out += [f"# {line}" for line in (cost if cost is not None else _cost(config))]
    return "\n".join(out) + "\n"


def _cost(config: ExperimentConfig, resources: dict[str, float] | None = None) -> list[str]:
    from .estimate import cost_lines  # (it plans with this module)

    return cost_lines(config, resources)


def run_plan_text(config: ExperimentConfig, resources: dict[str, float], log, cost: list[str] | None = None) -> str:
    """What the sweep will run, where, and where its records go, and what it will cost (``cost``: as in
    :func:`dry_run_text`): printed when it starts."""
    search, scaling = config.search, config.scaling
    languages = config.task.languages
    size = plan_size(config)
    trials, searches = size.total(len(languages)), size.searches * len(languages)
    warning = size_warning(config, size)
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
            f"sweep '{config.name}': {config.task.name} {', '.join(languages)}; {_budget(config, size)} ({trials} in "
            f"all, {searches} search(es)){stage1}; selected on {search.metric}",
            *([f"  {warning}"] if warning else []),
            *([f"  {translation}"] if translation else []),
            f"  each trial: {config.model.name_or_path}, {scaling.num_workers} worker(s) of {worker}, trained {where}; "
            f"{at_once} at once on this cluster ({cluster})",
            f"  MLflow: {redact(resolve_tracking_uri(config))} (experiment '{config.tracking.experiment_name}'); "
            f"storage: {redact(config.storage_path)}",
            f"  logs: {log} (this command); one file per trial under {log.parent}/<search>/",
            *[f"  {line}" for line in (cost if cost is not None else _cost(config, resources))],
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
    need = _worker_needs(config)
    fits = lambda node: all(node.get(k, 0.0) >= v for k, v in need.items())  # noqa: E731
    if not nodes or any(fits(node) for node in nodes):
        return None
    largest = max(nodes, key=lambda node: tuple(node.get(k, 0.0) for k in ("GPU", "CPU")))
    problem = Unplaceable(
        f"a trial's worker asks for {_show(need)} ({_KEYS}), "
        f"but the largest of the cluster's {len(nodes)} node(s) has {_show(largest)}"
    )
    problem.fits_a_node_type = any(not node_type or fits(node_type) for node_type in node_types or [])
    return problem


_KEYS = "scaling.cpus_per_worker, scaling.gpus_per_worker / use_gpu"  # what a worker's resources are set by


def _worker_needs(config: ExperimentConfig) -> dict[str, float]:
    return {k: v for k, v in config.scaling.resources_per_worker().items() if v > 0}


def _show(resources: dict[str, float]) -> str:
    return ", ".join(f"{resources.get(k, 0.0):g} {k}" for k in ("CPU", "GPU"))


def this_machine() -> dict[str, float]:
    """What a Ray started on this machine offers at most, as far as it is known without Ray: its CPUs
    (``os.cpu_count()``; Ray counts no more) and its NVIDIA GPUs (``CUDA_VISIBLE_DEVICES`` where set, else
    the ``/dev/nvidia<N>`` devices; Ray may find GPUs these miss)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        gpus = len([d for d in visible.split(",") if d.strip() and not d.strip().startswith("-")])
    else:
        gpus = len([d for d in Path("/dev").glob("nvidia*") if d.name[6:].isdigit()])
    return {"CPU": float(os.cpu_count() or 1), "GPU": float(gpus)}


def unplaceable_here(config: ExperimentConfig) -> tuple[str | None, str | None]:
    """Before Ray starts, where the sweep would start a local Ray (:func:`starts_a_local_ray`): what of a
    trial's worker this machine can never hold, as (an error, a warning); ``(None, None)`` where it holds one
    or the sweep joins a cluster. More CPUs than :func:`this_machine` has are an error; more GPUs than it shows
    a warning (they are found without Ray, and the paper's YAMLs, which ask for GPUs, are dry-run on laptops;
    the real run asks Ray once it has started, :func:`unplaceable`)."""
    if not starts_a_local_ray():
        return None, None
    need, here = _worker_needs(config), this_machine()
    asks = f"a trial's worker asks for {_show(need)} ({_KEYS})"
    local = "the sweep starts a local Ray: no RAY_ADDRESS names a cluster to join"
    if need.get("CPU", 0.0) > here["CPU"]:
        return (
            f"{asks}, but this machine has {here['CPU']:g} CPU: no trial could ever start on this machine "
            f"({local}); expected scaling.cpus_per_worker of at most {here['CPU']:g}, or RAY_ADDRESS",
            None,
        )
    if need.get("GPU", 0.0) > here["GPU"]:
        return None, (
            f"{asks}, but this machine shows {here['GPU']:g} GPU (CUDA_VISIBLE_DEVICES, /dev/nvidia*; {local}): "
            "no trial starts here unless Ray finds more (--set scaling.use_gpu=false trains on the CPU)"
        )
    return None, None

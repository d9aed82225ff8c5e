"""What a sweep will cost, before it starts: its trials, epochs and optimizer steps, and with a step time per
setup its trial-hours, GPU-hours and wall time on the cluster's slots. Imports neither Ray nor MLflow (nor
torch): the dry run prints it.

**Counted.** A trial's optimizer steps per epoch are the trial's own (:func:`optimizer_steps_per_epoch`): the
training records after ``task.max_records`` (counted from the split's files, nothing tokenized:
:func:`split_size`), each of ``scaling.num_workers`` ranks taking ``ceil(records / workers)`` of them
(``DistributedSampler``), in batches of ``training.batch_size``, one optimizer step per
``training.grad_accumulation`` batches and one after an epoch's last batch (the engine's
``step % accumulation == 0 or step == len(loader)``; DeepSpeed's engine steps at its own accumulation
boundaries, which run on across epochs). With ASHA a trial reaches rung ``k`` (``grace_period × η^k`` epochs)
with probability ``η^-k`` (:func:`expected_epochs`).

**Timed.** A setup is a (model, method, precision, resources) (:class:`Setup`); its :class:`StepTime` (seconds
per optimizer step, and a trial's start-up, setup, validation and checkpoint per epoch, test) comes from a short
calibration on the cluster (``flare-ray tune --estimate``, :mod:`flare_ray.training.calibrate`: alone, then as
many at once as the sweep runs trials at once, whose steps share the nodes; cached in the storage folder by a
fingerprint) or from the time records of an earlier sweep's trials of the same setup
(:func:`step_times_from_records`). A trial's seconds are then its phases added up, the first trial on each slot
paying a new process's start-up; each search's trials are laid onto its slots
(:func:`~flare_ray.search.progress.makespan`), the searches run at once, and stage 1 runs before them, alone,
where its folder is not there yet.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

from flare_ray.configfile import get_path, set_path
from flare_ray.experiment import ExperimentConfig, apply_sample
from flare_ray.experiment.training import METHODS, method_reads

from .plan import _cell_label as cell_label
from .plan import search_cells

CALIBRATION_DIR = "estimates"  # under the storage folder: one JSON per calibrated setup's fingerprint
STAGE1_INFO = "stage1.json"  # what a finished stage-1 folder holds (flare_ray.training.stage1, which imports torch)


# -- counting -----------------------------------------------------------------------------------------------------
def split_size(config: ExperimentConfig, language: str, role: str) -> int | None:
    """The records of one split after ``task.max_records``, counted without tokenizing or loading a model: the
    local files' rows, a translated split's parquet metadata (not made yet: the rows it is translated from), or
    a hub copy's ``max_records`` alone (None: unknown)."""
    from flare_ray.tasks import get_task

    task = get_task(config.task.task_config(language))
    limit = config.task.max_records.get(role)
    recipe = task.recipe(role)
    rows: int | None
    if recipe == "mt":
        from flare_ray.tasks.base import mt_split_path

        path = mt_split_path(config.task.mt_dir, task.name, language, role)
        if path.is_file():
            import pyarrow.parquet as pq

            rows = pq.read_metadata(path).num_rows
        else:  # the sweep translates the default recipe's rows first
            rows = None if config.task.hub_id else len(task._local_records(role, task.defaults[role]))
    elif config.task.hub_id:
        rows = None
    else:
        rows = len(task._local_records(role, recipe))
    if rows is None:
        return limit
    return min(rows, limit) if limit is not None else rows


def loader_batches(records: int, batch_size: int, workers: int = 1) -> int:
    """The batches of one rank's training loader per epoch: ``DistributedSampler`` (no ``drop_last``) gives
    each of ``workers`` ranks ``ceil(records / workers)`` records, padded with repeats."""
    return math.ceil(math.ceil(records / workers) / batch_size)


def optimizer_steps_per_epoch(records: int, batch_size: int, accumulation: int = 1, workers: int = 1) -> int:
    """The optimizer steps of one epoch, as :meth:`~flare_ray.training.engine.Engine.train_epoch` takes them
    (every ``accumulation`` batches, and after the last)."""
    return math.ceil(loader_batches(records, batch_size, workers) / accumulation)


def optimizer_steps(
    records: int, batch_size: int, accumulation: int, workers: int, epochs: int, deepspeed: bool = False
) -> int:
    """A trial's optimizer steps over ``epochs``: DeepSpeed's boundaries run on across epochs (every
    ``accumulation`` micro-batches of the whole run), the engine's own restart each epoch."""
    if deepspeed:
        return epochs * loader_batches(records, batch_size, workers) // accumulation
    return epochs * optimizer_steps_per_epoch(records, batch_size, accumulation, workers)


def rungs(grace_period: int, reduction_factor: float, epochs: int) -> list[int]:
    """ASHA's rungs that stop trials (Ray's milestones ``grace_period × η^k`` below its ``max_t``, which the
    sweep sets to ``epochs + 1``: a rung at the last epoch still stops a trial before its test)."""
    out, k = [], 0
    while grace_period * reduction_factor**k < epochs + 1:
        out.append(int(grace_period * reduction_factor**k))
        k += 1
    return out


def rung_fractions(grace_period: int, reduction_factor: float, epochs: int) -> list[float]:
    """The expected fraction of trials that go on past each rung: ``η^-(k+1)`` past rung ``k``."""
    return [reduction_factor ** -(k + 1) for k in range(len(rungs(grace_period, reduction_factor, epochs)))]


def expected_epochs(config: ExperimentConfig, epochs: int | None = None) -> float:
    """A trial's expected epochs (``epochs``: its cell's, else ``training.epochs``): all of them, or with ASHA
    each stretch between rungs weighted by the fraction of trials still running there (a trial reaches rung
    ``k`` with probability ``η^-k``)."""
    epochs, scheduler = epochs or config.training.epochs, config.search.scheduler
    if scheduler is None:
        return float(epochs)
    eta, total, last, alive = scheduler.reduction_factor, 0.0, 0, 1.0
    for k, rung in enumerate(rungs(scheduler.grace_period, eta, epochs)):
        total += (min(rung, epochs) - last) * alive
        last, alive = min(rung, epochs), eta ** -(k + 1)
    return total + (epochs - last) * alive


def makespan(lengths: list[float], slots: int) -> float:
    """When the last of ``lengths`` (seconds, started in order) ends on ``slots`` (each free slot takes the
    next): :func:`flare_ray.search.progress.makespan` without running trials."""
    from .progress import makespan as schedule

    return schedule([], lengths, max(slots, 1))


def trial_slots(config: ExperimentConfig, resources: dict[str, float], searches: int = 1) -> int | None:
    """How many trials of a search run at once: ``search.max_concurrent_trials``, or as many Train runs
    (``scaling.num_workers`` workers each) as ``resources`` hold, shared by the ``searches`` that run together
    (:func:`flare_ray.search.searches.concurrency` asks this). None: the trials ask for no resource."""
    spec, scaling = config.search, config.scaling
    if spec.max_concurrent_trials:
        return spec.max_concurrent_trials
    need = {k: v * scaling.num_workers for k, v in scaling.resources_per_worker().items() if v > 0}
    fits = [int(resources.get(k, 0.0) // v) for k, v in need.items()]
    return max(1, min(fits) // max(searches, 1)) if fits else None


# -- a cell's settings --------------------------------------------------------------------------------------------
class Cell:
    """A search's config with a grid cell's values (``{key: value}``) over it, read without validating a config
    per cell (a grid may have thousands): :meth:`get` a dotted key; :meth:`config`, validated, only where one is
    needed (a calibration)."""

    def __init__(self, config: ExperimentConfig, cell: dict[str, Any] | None = None, dumped: dict | None = None):
        self.base, self.cell = config, dict(cell or {})
        self._dumped = dumped if dumped is not None else config.model_dump(mode="json")
        self._config: ExperimentConfig | None = None if self.cell else config

    def get(self, key: str) -> Any:
        if key in self.cell:
            return self.cell[key]
        try:
            return get_path(self._dumped, key.split("."))
        except KeyError:
            return None

    def data(self) -> dict[str, Any]:
        """The config as YAML writes it, with the cell's values written in."""
        data = copy.deepcopy(self._dumped)
        for key, value in self.cell.items():
            set_path(data, key.split("."), value)
        return data

    def config(self) -> ExperimentConfig:
        if self._config is None:
            self._config = apply_sample(self.base, self.cell)
        return self._config

    def resources_per_worker(self) -> dict[str, float]:
        """As :meth:`~flare_ray.experiment.training.ScalingSpec.resources_per_worker` reads them."""
        gpus = self.get("scaling.gpus_per_worker")
        if gpus is None:
            gpus = 1.0 if self.get("scaling.use_gpu") else 0.0
        return {"CPU": float(self.get("scaling.cpus_per_worker")), "GPU": float(gpus)}


# -- step times ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setup:
    """What a step's time depends on, as the issue counts setups apart: model, method, precision, resources."""

    model: str
    method: str
    precision: str
    resources: str  # "1 x (0.5 CPU, 0 GPU)": workers x each worker's

    def __str__(self) -> str:
        return f"{self.model} {self.method} {self.precision} {self.resources}"


def setup_of(config: ExperimentConfig | Cell) -> Setup:
    """The setup of a config, or of a grid cell."""
    cell = config if isinstance(config, Cell) else Cell(config)
    each = ", ".join(f"{v:g} {k}" for k, v in cell.resources_per_worker().items())
    return Setup(
        cell.get("model.name_or_path"),
        cell.get("method.kind"),
        cell.get("training.precision"),
        f"{cell.get('scaling.num_workers')} x ({each})",
    )


@dataclass(frozen=True)
class StepTime:
    """A setup's seconds: per optimizer step (its batches' loading included), and a trial's non-step phases
    (start-up and setup once, validation and checkpoint per epoch, test once); ``source``: where they come from."""

    step: float
    startup: float = 0.0
    setup: float = 0.0
    validation: float = 0.0
    checkpoint: float = 0.0
    test: float = 0.0
    source: str = ""
    alone: float = 1.0  # a trial that runs alone (stage 1) takes this share of these seconds


def calibration_fingerprint(config: ExperimentConfig | Cell, language: str) -> str:
    """What a calibration's figures depend on: the setup, the batch shapes and the adapter, the data sizes."""
    cell = config if isinstance(config, Cell) else Cell(config)
    data = cell.data()
    training = {k: v for k, v in data["training"].items() if k not in ("seed", "learning_rate", "epochs")}
    task = {k: v for k, v in data["task"].items() if k != "languages"}
    settings = {
        "setup": str(setup_of(cell)),
        "training": training,
        "method": data["method"],
        "model": {k: v for k, v in data["model"].items() if k != "stage1"},
        "task": {**task, "language": language},
        "deepspeed": data["scaling"].get("deepspeed"),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached_calibration(folder: Path | None, fingerprint: str) -> StepTime | None:
    """A calibration written earlier under ``<storage>/estimates/<fingerprint>.json`` (None: none, or unreadable)."""
    if folder is None:
        return None
    path = folder / CALIBRATION_DIR / f"{fingerprint}.json"
    try:
        return StepTime(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def save_calibration(folder: Path, fingerprint: str, time: StepTime) -> Path:
    path = folder / CALIBRATION_DIR / f"{fingerprint}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(time), indent=2))
    return path


@dataclass(frozen=True)
class TrialRecord:
    """An earlier trial as its MLflow run recorded it: its params (the flattened config), its last metrics
    (``time/*``), and its optimizer steps and epochs (``train/optimizer_steps``, summed over its history)."""

    params: dict[str, str]
    metrics: dict[str, float]
    steps: float
    epochs: int

    @property
    def setup(self) -> Setup | None:
        params = self.params
        if "model.name_or_path" not in params:
            return None
        gpus = params.get("scaling.gpus_per_worker")
        gpu = float(gpus) if gpus not in (None, "None") else (1.0 if params.get("scaling.use_gpu") == "True" else 0.0)
        each = f"{float(params.get('scaling.cpus_per_worker', 1)):g} CPU, {gpu:g} GPU"
        return Setup(
            params["model.name_or_path"],
            params.get("method.kind", ""),
            params.get("training.precision", ""),
            f"{params.get('scaling.num_workers', '1')} x ({each})",
        )


def step_times_from_records(records: Iterable[TrialRecord], setups: Iterable[Setup]) -> dict[Setup, StepTime]:
    """For each of ``setups``, its step time from the earlier trials of that (model, method, precision,
    resources): their summed step and data time over their summed optimizer steps, the means of their start-up,
    setup and test, and of their validation and checkpoints per epoch."""
    wanted = set(setups)
    found: dict[Setup, list[TrialRecord]] = {}
    for record in records:
        if record.setup in wanted and "time/wall" in record.metrics:
            found.setdefault(record.setup, []).append(record)
    out = {}
    for setup, matched in found.items():
        trains = METHODS[setup.method].trains if setup.method in METHODS else True
        steps = sum(r.steps for r in matched)
        if trains and steps <= 0:
            continue  # an earlier version's trials: their steps are not known
        step = sum(r.metrics.get("time/train_steps", 0.0) + r.metrics.get("time/data", 0.0) for r in matched)
        epochs = sum(max(r.epochs, 1) for r in matched)

        def mean(name: str, per: int = len(matched), matched=matched) -> float:
            return sum(r.metrics.get(f"time/{name}", 0.0) for r in matched) / per

        fresh = [r.metrics.get("time/startup", 0.0) for r in matched]  # a reused process starts in a moment:
        fresh = [seconds for seconds in fresh if seconds >= max(fresh) / 2]  # the trials that started one
        out[setup] = StepTime(
            step / steps if steps else 0.0,
            startup=sum(fresh) / len(fresh),
            setup=mean("setup") + mean("source_cache"),
            validation=mean("validation", epochs),
            checkpoint=mean("checkpoint", epochs),
            test=mean("test"),
            source=f"the time records of {len(matched)} earlier trial(s)",
        )
    return out


def read_previous(client, experiment_name: str, setups: Iterable[Setup], limit: int = 100) -> dict[Setup, StepTime]:
    """Step times from the latest finished trials (at most ``limit``) of an MLflow experiment (``client``: an
    ``MlflowClient``) of the ``setups`` asked for (:func:`step_times_from_records`)."""
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is None:
        return {}
    wanted = set(setups)
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string="attributes.status = 'FINISHED' and metrics.`time/wall` > 0",
        max_results=limit,
        order_by=["attributes.start_time DESC"],
    )
    records = []
    for run in runs:
        record = TrialRecord(dict(run.data.params), dict(run.data.metrics), 0.0, 0)
        if "mlflow.parentRunId" not in run.data.tags or record.setup not in wanted:  # (a parent sums its trials')
            continue
        history = client.get_metric_history(run.info.run_id, "train/optimizer_steps")
        steps = {m.step: m.value for m in history}  # one value per epoch (a replayed epoch: logged once)
        records.append(TrialRecord(record.params, record.metrics, sum(steps.values()), len(steps)))
    return step_times_from_records(records, wanted)


# -- the estimate -------------------------------------------------------------------------------------------------
@dataclass
class TrialKind:
    """The trials of a search that share a config (a cell): how many, their epochs and steps, their seconds."""

    setup: Setup
    trials: int
    epochs: float  # expected, per trial
    steps: float  # expected optimizer steps per trial
    seconds: float | None  # per trial, its start-up aside; None: no step time known
    gpus: float  # per trial
    startup: float = 0.0  # the start-up of a trial in a new process (a later trial reuses its slot's)


@dataclass
class SearchEstimate:
    name: str
    kinds: list[TrialKind]
    slots: int

    @property
    def trials(self) -> int:
        return sum(k.trials for k in self.kinds)

    def total(self, what: str) -> float:
        return sum(k.trials * getattr(k, what) for k in self.kinds)

    @property
    def timed(self) -> bool:
        return all(k.seconds is not None for k in self.kinds)

    def lengths(self) -> list[tuple[float, float]]:
        """Every trial's seconds and GPUs, in order: the first on each slot pays the start-up of a new process
        (imports), the later ones run in the process of the trial before them (Tune's ``reuse_actors``)."""
        out = [(k.seconds or 0.0, k.gpus, k.startup) for k in self.kinds for _ in range(k.trials)]
        return [
            (seconds + (startup if i < self.slots else 0.0), gpus) for i, (seconds, gpus, startup) in enumerate(out)
        ]

    def trial_seconds(self) -> float:
        return sum(seconds for seconds, _ in self.lengths())

    def gpu_seconds(self) -> float:
        return sum(seconds * gpus for seconds, gpus in self.lengths())

    def wall(self) -> float:
        return makespan([seconds for seconds, _ in self.lengths()], self.slots)


@dataclass
class Estimate:
    """A sweep's estimate: its searches', stage 1's seconds (0: its folder is there, or it needs none), and the
    step time of each setup (missing: unknown)."""

    searches: list[SearchEstimate]
    times: dict[Setup, StepTime]
    stage1: float | None = 0.0  # None: stage 1 runs first, its time unknown
    seeds: str = ""  # adaptive seeds: "min" or "max" (the estimate is made for both)
    setups: list[Setup] = field(default_factory=list)
    examples: dict[Setup, Cell] = field(default_factory=dict)  # a cell of each setup (to calibrate it)

    @property
    def timed(self) -> bool:
        return self.stage1 is not None and all(s.timed for s in self.searches)

    def total(self, what: str) -> float:
        return sum(s.total(what) for s in self.searches)

    @property
    def trials(self) -> int:
        return sum(s.trials for s in self.searches)

    def trial_seconds(self) -> float:
        return sum(s.trial_seconds() for s in self.searches)

    def gpu_seconds(self) -> float:
        return sum(s.gpu_seconds() for s in self.searches)

    def trials_wall(self) -> float:
        """The searches run at once, each on its own slots: the slowest one's."""
        return max((s.wall() for s in self.searches), default=0.0)

    def wall(self) -> float:
        return (self.stage1 or 0.0) + self.trials_wall()

    def metrics(self) -> dict[str, float]:
        """For the parent run: ``estimate/*``."""
        out = {
            "estimate/trials": float(self.trials),
            "estimate/epochs": self.total("epochs"),
            "estimate/steps": self.total("steps"),
        }
        if self.timed:
            out.update(
                {
                    "estimate/trial_seconds": self.trial_seconds(),
                    "estimate/gpu_seconds": self.gpu_seconds(),
                    "estimate/stage1_seconds": self.stage1 or 0.0,
                    "estimate/trials_wall_seconds": self.trials_wall(),
                    "estimate/wall_seconds": self.wall(),
                }
            )
        return out

    def lines(self) -> list[str]:
        """What the dry run and the sweep's plan print: per search (a few, then the rest together) and in all."""
        from .progress import duration

        def hours(seconds: float) -> str:
            return f"{seconds / 3600:.2g}" if seconds < 360000 else f"{seconds / 3600:,.0f}"

        def row(name: str, trials: int, epochs: float, steps: float, seconds: float | None, slots: str) -> str:
            plural = "s" if trials != 1 else ""
            line = f"{name}: {trials:,} trial{plural}, {epochs:,.0f} epochs, {steps:,.0f} optimizer steps"
            return line + (f", {hours(seconds)} trial-h{slots}" if seconds is not None else "")

        seeds = f" ({self.seeds} seeds per cell)" if self.seeds else ""
        out = [f"cost{seeds}:"]
        shown = self.searches if len(self.searches) <= 6 else self.searches[:5]
        for s in shown:
            wall = f", {duration(s.wall())} on {s.slots} slot(s)" if s.timed else ""
            out.append(
                "  "
                + row(
                    s.name, s.trials, s.total("epochs"), s.total("steps"), s.trial_seconds() if s.timed else None, wall
                )
            )
        if len(shown) < len(self.searches):
            rest = self.searches[len(shown) :]
            out.append(
                f"  ... {len(rest)} more search(es): {sum(s.trials for s in rest)} trials, "
                f"{sum(s.total('steps') for s in rest):,.0f} optimizer steps"
            )
        total = row("all", self.trials, self.total("epochs"), self.total("steps"), None, "")
        for setup in self.setups:
            time = self.times.get(setup)
            out.append(
                f"  step time of {setup}: "
                + (
                    f"{time.step:.3g} s ({time.source})"
                    if time is not None
                    else "no step time known: run with --estimate"
                )
            )
        if self.timed:
            stage1 = f" (stage 1 first: {duration(self.stage1)})" if self.stage1 else ""
            total += (
                f"; {hours(self.trial_seconds())} trial-h, {hours(self.gpu_seconds())} GPU-h; wall time "
                f"{duration(self.wall())}{stage1}"
            )
        out.insert(1, "  " + total)
        return out


@dataclass
class _Planned:
    """A search as the estimate needs it: its name and language, and its kinds of trial (a cell, how many)."""

    name: str
    language: str
    cells: list[tuple[Cell, int]]


def _planned(config: ExperimentConfig, seeds: int | None = None) -> list[_Planned]:
    """The searches of :func:`~flare_ray.search.plan.plan_searches`, named alike, without a config per cell (a
    grid may have thousands): one per language with every cell, or with a grid and a space one per cell (whose
    method reads no space key: once per seed). ``seeds``: per cell (None: ``search.seeds``)."""
    spec, languages = config.search, config.task.languages
    seeds = seeds or len(spec.seed_list)
    if not spec.cells:
        return [
            _Planned(f"{config.name}-{lang}", lang, [(Cell(config), spec.num_samples * seeds)]) for lang in languages
        ]
    dumped = config.model_dump(mode="json")
    cells = [Cell(config, cell, dumped) for cell in search_cells(config)]
    if not spec.space:
        return [_Planned(f"{config.name}-{lang}", lang, [(cell, seeds) for cell in cells]) for lang in languages]
    out = []
    for language in languages:
        for i, cell in enumerate(cells):
            sampled = any(method_reads(cell.get("method.kind"), key) for key in spec.space)
            name = f"{config.name}-{language}-cell{i}-{cell_label(config, cell.cell)}"
            out.append(_Planned(name, language, [(cell, (spec.num_samples if sampled else 1) * seeds)]))
    return out


def stage1_setup(config: ExperimentConfig) -> ExperimentConfig:
    """The experiment as stage 1 trains it, as far as its cost goes (plain LoRA, ``stage1.training``, the
    English side of the same splits; :func:`flare_ray.training.stage1.stage1_experiment`)."""
    update = {
        "model": config.model.model_copy(update={"stage1": None}),
        "method": config.method.model_copy(update={"kind": "lora", "lora": config.stage1.lora or config.method.lora}),
        "training": config.stage1.training or config.training,
        "search": config.search.model_copy(update={"scheduler": None}),
    }
    return config.model_copy(update=update)


def estimate(
    config: ExperimentConfig,
    resources: dict[str, float] | None,
    times: dict[Setup, StepTime] | None = None,
    stage1: bool = False,
    seeds_per_cell: int | None = None,
) -> Estimate:
    """The estimate of a sweep of ``config`` on a cluster of ``resources`` (None: unknown, each search on
    ``max_concurrent_trials`` slots, else one). ``times``: the known step times; ``stage1``: stage 1 is trained
    first (``model.stage1: auto`` and its folder not there yet); ``seeds_per_cell``: the seeds each cell runs
    (adaptive seeds: their min or max; None: ``search.seeds``)."""
    times = dict(times or {})
    searches = _planned(config, seeds_per_cell)
    sizes: dict[str, int | None] = {}
    out, setups, examples = [], [], {}
    for search in searches:
        if search.language not in sizes:
            sizes[search.language] = split_size(config, search.language, "train")
        kinds = []
        for cell, trials in search.cells:
            setup = setup_of(cell)
            if setup not in setups:
                setups.append(setup)
                examples[setup] = cell
            kinds.append(_kind(cell, setup, trials, sizes[search.language], times.get(setup)))
        slots = trial_slots(config, resources, len(searches)) if resources is not None else None
        if slots is None:  # unknown resources (or trials that ask for none: all at once)
            slots = config.search.max_concurrent_trials or (sum(k.trials for k in kinds) if resources else 1)
        out.append(SearchEstimate(search.name, kinds, slots))
    stage1_time: float | None = 0.0
    if stage1:
        first = Cell(stage1_setup(config))
        setup = setup_of(first)
        if setup not in setups:
            setups.insert(0, setup)
        examples.setdefault(setup, first)
        language = config.task.languages[0]
        records = sizes.get(language) or split_size(config, language, "train")
        kind = _kind(first, setup, 1, records, times.get(setup))
        alone = times[setup].alone if setup in times else 1.0  # stage 1 runs alone
        stage1_time = None if kind.seconds is None else (kind.seconds + kind.startup) * alone
    adaptive = config.search.adaptive_seeds
    label = "" if seeds_per_cell is None else ("min" if adaptive and seeds_per_cell == adaptive.min else "max")
    return Estimate(out, times, stage1_time, label, setups, examples)


def _kind(cell: Cell, setup: Setup, trials: int, records: int | None, time: StepTime | None) -> TrialKind:
    trains = METHODS[cell.get("method.kind")].trains
    epochs = expected_epochs(cell.base, cell.get("training.epochs")) if trains else 1.0
    steps = 0.0
    if trains and records is not None:
        all_epochs = cell.get("training.epochs")
        steps = optimizer_steps(
            records,
            cell.get("training.batch_size"),
            cell.get("training.grad_accumulation"),
            cell.get("scaling.num_workers"),
            all_epochs,
            deepspeed=cell.get("scaling.deepspeed") is not None,
        )
        steps *= epochs / all_epochs
    seconds = None
    if time is not None and (records is not None or not trains):
        seconds = time.setup + steps * time.step + epochs * (time.validation + time.checkpoint) + time.test
    gpus = cell.resources_per_worker()["GPU"] * cell.get("scaling.num_workers")
    return TrialKind(setup, trials, epochs, steps, seconds, gpus, time.startup if time is not None else 0.0)


def versus(estimated: float, actual: float) -> str:
    """``estimate: 2 min 10 s, actual 1 min 58 s (+10 %)``: the estimate's error against the actual."""
    from .progress import duration

    error = (estimated - actual) / actual * 100 if actual > 0 else 0.0
    return f"estimate: {duration(estimated)}, actual {duration(actual)} ({error:+.0f} %)"


def estimates(config: ExperimentConfig, resources: dict[str, float] | None, times=None, stage1: bool = False):
    """The sweep's estimate, or with adaptive seeds two: with ``min`` seeds per cell and with ``max``."""
    adaptive = config.search.adaptive_seeds
    if adaptive is None:
        return [estimate(config, resources, times, stage1)]
    return [estimate(config, resources, times, stage1, n) for n in (adaptive.min, adaptive.max)]


def cost_lines(config: ExperimentConfig, resources: dict[str, float] | None, times=None, stage1=False) -> list[str]:
    """The estimate's lines (both of adaptive seeds'), or one line saying why the sweep could not be counted."""
    try:
        return [line for made in estimates(config, resources, times, stage1) for line in made.lines()]
    except Exception as err:  # noqa: BLE001 - data the trials would refuse is reported by them, in their words
        return [f"cost: not counted ({type(err).__name__}: {err})"]


# -- where the step times come from -------------------------------------------------------------------------------
def known_times(
    config: ExperimentConfig,
    setups: dict[Setup, Cell | ExperimentConfig],
    calibrate: bool,
    tracking_uri: str | None,
    say,
    copies: int = 1,
) -> dict[Setup, StepTime]:
    """Each setup's step time: a calibration cached in the storage folder, or with ``calibrate`` one run now (a
    Ray task with a trial worker's resources; a local Ray is started where none is; ``copies``: as many at once
    as the sweep runs trials at once, whose steps share the nodes' CPUs and memory bandwidth); else the time
    records of earlier trials of that setup in the sweep's MLflow experiment (``tracking_uri``). ``say``: prints
    a line."""
    from flare_ray.storage import local_folder

    folder = local_folder(config.storage_path)
    times: dict[Setup, StepTime] = {}
    for setup, example in setups.items():
        example = example if isinstance(example, Cell) else Cell(example)
        key = calibration_fingerprint(example, config.task.languages[0]) + (f"-x{copies}" if copies > 1 else "")
        cached = cached_calibration(folder, key)
        if cached is not None:
            times[setup] = cached
        elif calibrate:
            try:
                times[setup] = _calibrate(example.config(), config.task.languages[0], key, copies)
            except Exception as err:  # noqa: BLE001 - the sweep itself says what is wrong with its trials
                say(f"cost: the calibration of {setup} failed ({type(err).__name__}: {err})")
                continue
            say(f"calibrated {setup}: {times[setup].step:.3g} s per optimizer step")
            if folder is not None:
                save_calibration(folder, key, times[setup])
    missing = [s for s in setups if s not in times]
    if missing and tracking_uri:
        try:
            from mlflow import MlflowClient

            times.update(read_previous(MlflowClient(tracking_uri), config.tracking.experiment_name, missing))
        except Exception as err:  # noqa: BLE001 - the estimate goes without: counts only
            say(f"cost: the earlier trials' time records could not be read ({type(err).__name__})")
    return times


def _calibrate(config: ExperimentConfig, language: str, key: str, copies: int = 1) -> StepTime:
    """Calibrate alone, then ``copies`` at once (the figures, their mean; ``alone``: the step time's share)."""
    import time

    import ray

    from flare_ray.local_ray import init_ray
    from flare_ray.training.calibrate import calibrate

    if not ray.is_initialized():  # the dry run's: started for the first calibration it needs, stopped after it
        init_ray(ignore_reinit_error=True, log_to_driver=False, configure_logging=False)
    config = _readable(config, language)
    need = config.scaling.resources_per_worker()
    # a process of its own (max_calls=1), as a trial's first: its start-up is a new process's, imports and all
    task = ray.remote(num_cpus=need["CPU"], num_gpus=need["GPU"], max_calls=1)(calibrate)
    alone = ray.get(task.remote(config, language, submitted=time.time()))
    if copies <= 1:
        return StepTime(**alone, source=f"calibrated here ({key})")
    runs = ray.get([task.remote(config, language, submitted=time.time()) for _ in range(copies)])
    mean = {name: sum(run[name] for run in runs) / len(runs) for name in alone}
    share = min(alone["step"] / mean["step"], 1.0) if mean["step"] > 0 else 1.0
    return StepTime(**mean, source=f"calibrated here, {copies} at once ({key})", alone=share)


def _readable(config: ExperimentConfig, language: str) -> ExperimentConfig:
    """The config with its task's default recipe for each ``mt`` split not translated yet (the sweep translates
    before its trials, after the estimate; the rows, and so their count, are the same)."""
    from flare_ray.tasks import get_task
    from flare_ray.tasks.base import mt_split_path

    task = get_task(config.task.task_config(language))
    splits = {
        role: task.defaults[role]
        if recipe == "mt" and not mt_split_path(config.task.mt_dir, task.name, language, role).is_file()
        else recipe
        for role, recipe in config.task.splits.items()
    }
    if splits == config.task.splits:
        return config
    return config.model_copy(update={"task": config.task.model_copy(update={"splits": splits})})


def stage1_pending(config: ExperimentConfig, exact: bool = True) -> bool:
    """Will the sweep train stage 1 first (``model.stage1: auto`` and no folder of its fingerprint yet)? Where
    its data is to be translated first, it will (its fingerprint is that of the translated English side).
    ``exact=False`` (the dry run, which imports no torch, and so no fingerprint): where no stage-1 folder at all
    is there yet."""
    if config.model.stage1 != "auto":
        return False
    from flare_ray.storage import exists, join, local_folder

    if not exact:
        folder = local_folder(config.storage_path)
        return folder is None or not any((folder / "stage1").glob(f"*/{STAGE1_INFO}"))

    from flare_ray.tasks import TaskDataError
    from flare_ray.training.stage1 import fingerprint

    try:
        key = fingerprint(config)
    except TaskDataError:  # not translated yet
        return True
    return not exists(join(config.storage_path, "stage1", key, STAGE1_INFO))

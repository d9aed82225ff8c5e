"""How far a sweep is (``k/N trials``, epochs, elapsed, ETA) and where its time went (the sums of its trials'
``time/*`` figures, the idle time of its slots, its goodput): the arithmetic, apart from Tune and MLflow.

**Progress.** ``N`` is the plan's (:attr:`~flare_ray.search.plan.Search.expected_trials`); trials the plan has
not made yet count as pending (a searcher behind a ``ConcurrencyLimiter`` makes them one at a time). The work
is counted in epochs: a trial of a method that trains nothing is one unit. A scheduler (ASHA) may stop trials
early: then the epochs still to run, and the ETA, are upper bounds (``≤``); adaptive seeds (``search.seeds: {min,
max}``) may end a search before its ``max`` seeds per cell: then the trials are too.

**ETA.** The trial-seconds per epoch so far (each reported trial's time at its last result over the epochs it
reported: start-up, validation and checkpoints included, measured with the trials that ran beside it), times
the time the remaining epochs take on the search's slots when each free slot takes the next trial (the running
trials first, with what is left of theirs; then the trials not started, whole). The sweep's ETA is its slowest
search's (each search keeps its own slots). It is the time until the last trial ends, without the selection
and report after it.

**Time.** The sweep's time figures are the sums over its trials of their ``time/*`` figures
(:mod:`flare_ray.training.timing`), each trial's up to its last result. The slots' time is slots × the
searches' wall time; what the trials did not use of it is idle. The goodput is the share of the trials' wall
time spent in optimizer steps (and, beside it, the share of the slots' time).
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from flare_ray.experiment.training import METHODS
from flare_ray.training.timing import OTHER, PHASES, PREFIX, WALL, figures

from .plan import Search, search_cells

FINISHED = {"TERMINATED", "ERROR"}


@dataclass(frozen=True)
class SearchPlan:
    """What a search plans: its trials, their epochs in all, the trials it runs at once, and whether a scheduler
    may stop trials early."""

    trials: int
    epochs: int
    slots: int
    early_stopping: bool = False
    trials_bound: bool = False  # adaptive seeds (search.seeds: {min, max}): ``trials`` is the most it may run

    @property
    def per_trial(self) -> float:
        return self.epochs / self.trials if self.trials else 0.0


def search_plan(search: Search, slots: int | None) -> SearchPlan:
    """A search's plan; ``slots``: its trials at once (None: as many as it has)."""
    config, spec = search.config, search.config.search

    def units(kind: str, epochs: int) -> int:
        return epochs if METHODS[kind].trains else 1

    kind, epochs = config.method.kind, config.training.epochs
    if spec.cells and not spec.space:
        cells = search_cells(config)
        total = sum(units(c.get("method.kind", kind), c.get("training.epochs", epochs)) for c in cells)
        total *= len(spec.seed_list)
    else:
        total = search.expected_trials * units(kind, epochs)
    trials, adaptive = search.expected_trials, spec.adaptive_seeds is not None
    slots = max(1, min(slots or trials, trials))
    return SearchPlan(trials, total, slots, spec.scheduler is not None or adaptive, trials_bound=adaptive)


@dataclass(frozen=True)
class TrialState:
    """A trial as Tune holds it: its status, the epoch of its last result, its time then (Tune's
    ``time_total_s``)."""

    status: str
    epoch: int = 0
    seconds: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass
class SearchProgress:
    """One search's counts; ``remaining``: what is left of each unfinished trial (epochs; those not started:
    whole)."""

    planned: int
    done: int = 0
    running: int = 0
    pending: int = 0
    failed: int = 0
    epochs_done: float = 0.0
    epochs: int = 0
    bound: bool = False  # epochs and ETA are upper bounds (a scheduler may stop trials early)
    trials_bound: bool = False  # so is the trial count (adaptive seeds may end the search early)
    running_left: list[float] = field(default_factory=list)
    queued_left: list[float] = field(default_factory=list)
    slots: int = 1
    seconds: float = 0.0  # trial-seconds of the reported epochs
    reported: float = 0.0  # epochs reported, finished trials' whole

    def makespan(self) -> float:
        """Epochs of time until its last trial ends: each free slot takes the next trial."""
        return makespan(self.running_left, self.queued_left, self.slots)


def search_progress(plan: SearchPlan, trials: list[TrialState]) -> SearchProgress:
    """A search's progress from its plan and the trials Tune made so far."""
    out = SearchProgress(
        planned=plan.trials,
        epochs=plan.epochs,
        bound=plan.early_stopping,
        trials_bound=plan.trials_bound,
        slots=plan.slots,
    )
    per_trial = plan.per_trial
    for trial in trials:
        if trial.status == "TERMINATED":
            out.done += 1
        elif trial.status == "ERROR":
            out.failed += 1
        elif trial.status == "RUNNING":
            out.running += 1
        else:  # PENDING (made, waiting for resources), PAUSED
            out.pending += 1
        done = per_trial if trial.finished else min(float(trial.epoch), per_trial)
        out.epochs_done += done
        if trial.seconds > 0 and (trial.epoch > 0 or trial.finished):
            out.seconds += trial.seconds
            out.reported += max(float(trial.epoch), 1.0) if trial.finished else float(trial.epoch)
        if not trial.finished:
            (out.running_left if trial.status == "RUNNING" else out.queued_left).append(per_trial - done)
    unmade = max(plan.trials - len(trials), 0)
    out.pending += unmade
    out.queued_left += [per_trial] * unmade
    return out


def makespan(running: list[float], queued: list[float], slots: int) -> float:
    """When the last of the trials ends, where ``running`` trials have that much left and ``queued`` ones start,
    in order, as soon as one of ``slots`` is free (greedy list scheduling)."""
    free = sorted(running) + [0.0] * max(slots - len(running), 0)
    heapq.heapify(free)
    end = max(free, default=0.0)
    for length in queued:
        start = heapq.heappop(free)
        heapq.heappush(free, start + length)
        end = max(end, start + length)
    return end


@dataclass
class Progress:
    """The sweep's progress: every search's, added up, and the ETA (seconds; None before any epoch ended)."""

    searches: dict[str, SearchProgress]

    def total(self, name: str) -> float:
        return sum(getattr(p, name) for p in self.searches.values())

    @property
    def bound(self) -> bool:
        return any(p.bound for p in self.searches.values())

    def seconds_per_epoch(self) -> float | None:
        epochs = self.total("reported")
        return self.total("seconds") / epochs if epochs > 0 else None

    def eta(self) -> float | None:
        rate = self.seconds_per_epoch()
        if rate is None:
            return None
        return rate * max((p.makespan() for p in self.searches.values()), default=0.0)

    def when(self) -> str:
        """``ETA 1 min 40 s`` (``ETA ≤ ...`` where a scheduler may stop trials early), or when it will be known."""
        eta = self.eta()
        if eta is None:
            return "ETA after the first epoch"
        return f"ETA {'≤ ' if self.bound else ''}{duration(eta)}"

    def short(self) -> str:
        """``5/9 trials done, ETA 40 s``."""
        return f"{int(self.total('done'))}/{int(self.total('planned'))} trials done, {self.when()}"

    def line(self, elapsed: float) -> str:
        """``progress: 3/9 trials done, 4 running, 2 pending, 0 failed; 14/27 epochs; 2 min 10 s elapsed, ETA
        1 min 40 s`` (with a scheduler that stops trials early: ``≤27 epochs``, ``ETA ≤ ...``)."""
        le = "≤" if self.bound else ""
        done, planned = int(self.total("done")), int(self.total("planned"))
        most = "≤" if any(p.trials_bound for p in self.searches.values()) else ""
        return (
            f"progress: {done}/{most}{planned} trials done, {int(self.total('running'))} running, "
            f"{int(self.total('pending'))} pending, {int(self.total('failed'))} failed; "
            f"{math.floor(self.total('epochs_done'))}/{le}{int(self.total('epochs'))} epochs; "
            f"{duration(elapsed)} elapsed, {self.when()}"
        )


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def percent(share: float) -> str:
    return f"{share * 100:.0f} %"


# -- where the time went ------------------------------------------------------------------------------------------
NAMES = {
    "startup": "start-up",
    "setup": "setup",
    "source_cache": "source cache",
    "data": "data",
    "train_steps": "steps",
    "validation": "validation",
    "checkpoint": "checkpoints",
    "test": "test",
    OTHER: "other",
}


@dataclass
class TimeAccount:
    """The sums of the trials' time figures (seconds per phase, ``wall`` included), the slots and the
    searches' wall time; ``before``: what the sweep did before its trials (``{"stage 1": seconds}``)."""

    trials: int
    phases: dict[str, float]
    slots: int
    wall: float
    before: dict[str, float] = field(default_factory=dict)

    @property
    def trial_seconds(self) -> float:
        return self.phases.get(WALL, 0.0)

    @property
    def slot_seconds(self) -> float:
        return self.slots * self.wall

    @property
    def idle(self) -> float:
        """Slot-seconds no trial used (0 where the trials' time exceeds it: a resumed sweep's trials count
        their earlier attempts)."""
        return max(self.slot_seconds - self.trial_seconds, 0.0)

    @property
    def goodput(self) -> float:
        """The share of the trials' wall time spent in optimizer steps."""
        return self.phases.get("train_steps", 0.0) / self.trial_seconds if self.trial_seconds else 0.0

    @property
    def slot_goodput(self) -> float:
        """The share of the slots' time spent in optimizer steps."""
        return self.phases.get("train_steps", 0.0) / self.slot_seconds if self.slot_seconds else 0.0

    def metrics(self) -> dict[str, float]:
        """For the parent run: ``time/<phase>`` (sums over the trials, seconds), ``time/trials`` and ``sweep/*``."""
        out = {f"{PREFIX}{name}": seconds for name, seconds in self.phases.items()}
        out[f"{PREFIX}trials"] = float(self.trials)
        out.update(
            {
                "sweep/slots": float(self.slots),
                "sweep/wall_seconds": self.wall,
                "sweep/slot_seconds": self.slot_seconds,
                "sweep/slot_idle_seconds": self.idle,
                "sweep/slot_idle_share": self.idle / self.slot_seconds if self.slot_seconds else 0.0,
                "sweep/goodput": self.goodput,
                "sweep/slot_goodput": self.slot_goodput,
            }
        )
        out.update({f"sweep/{key.replace(' ', '')}_seconds": seconds for key, seconds in self.before.items()})
        return out

    def lines(self) -> list[str]:
        """Two lines for the console: the trials' time by phase, then the slots and the goodput."""
        total = self.trial_seconds
        shares = sorted(  # largest first (ties in the phases' order)
            ((self.phases.get(name, 0.0) / total if total else 0.0, NAMES[name]) for name in (*PHASES, OTHER)),
            key=lambda share: -share[0],
        )
        parts = ", ".join(f"{label} {percent(share)}" for share, label in shares if round(share * 100) >= 1)
        first = f"time: {self.trials} trials, {total / 60:.1f} trial-min" + (f": {parts}" if parts else "")
        if self.before:
            first += f" ({', '.join(f'{k} {duration(v)}' for k, v in self.before.items())} before the trials)"
        idle = self.idle / self.slot_seconds if self.slot_seconds else 0.0
        second = (
            f"slots: {self.slots} × {duration(self.wall)}, idle {percent(idle)}; goodput {percent(self.goodput)} of "
            f"the trials' time in optimizer steps ({percent(self.slot_goodput)} of the slots')"
        )
        return [first, second]


def time_account(
    results: Iterable[dict[str, Any]], slots: int, wall: float, before: dict[str, float] | None = None
) -> TimeAccount:
    """The sweep's :class:`TimeAccount` from its trials' last results (those with time figures)."""
    phases = dict.fromkeys((*PHASES, OTHER, WALL), 0.0)
    trials = 0
    for result in results:
        found = figures(result or {})
        if f"{PREFIX}{WALL}" not in found:
            continue
        trials += 1
        for key, seconds in found.items():
            name = key.removeprefix(PREFIX)
            if name in phases:
                phases[name] += seconds
    return TimeAccount(trials, phases, slots, wall, dict(before or {}))

"""What a person sees of a sweep while it runs (everything else is in the log files).

One :class:`Console` per sweep, shared by its searches (their Tune loops run in threads of the driver),
prints one line per trial per epoch (the trial, its language, epoch, training loss, validation metric,
elapsed time), a line when a trial ends, a status table of every search at most every ``interval``
seconds (headed by the sweep's progress: ``k/N trials``, epochs, elapsed time and ETA, from the searches' plans,
:mod:`~flare_ray.search.progress`), and for a trial that fails, what Ray reported and where the trial's full
log is. A restarted trial
reports its earlier epochs again (``replayed``, :func:`flare_ray.training.loop._replay`): the console prints
only those it has not shown, and says so.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from typing import Any, Callable

import ray.tune
from ray.tune.experiment import Trial

from flare_ray.experiment.config import BASELINE_ARM
from flare_ray.tracking.callback import trial_error
from flare_ray.training.checkpoints import REPLAYED_KEY

from .progress import Progress, SearchPlan, TrialState, search_progress
from .progress import duration as _duration
from .searches import Search, configuration, seeded

STATUS_INTERVAL = 60.0  # seconds between status tables
_active: list["Console | None"] = [None]  # the console of this process's sweep (the latest made)


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def describe(search: Search, config: dict[str, Any]) -> str:
    """A trial in a few words: its method, what it varied and its seed (``flare fusion=add seed=1``); in an
    ablation its arm: ``baseline seed=0`` (the baseline's values are in the dry run and the report), or the one
    value the arm changes, ``fusion=add seed=0``, with the grid's values where there is a grid too."""
    sample = seeded(config, search.config.search.seed_list)
    varied = configuration(sample, search.cell)
    words = []
    if search.ablation is not None:
        arm = search.ablation.arm_of(varied)
        changed = arm.partition("=")[0]
        words = [BASELINE_ARM] if arm == BASELINE_ARM else [f"{changed.rsplit('.', 1)[-1]}={_value(varied[changed])}"]
        for key in search.ablation.keys:
            varied.pop(key, None)
    kind = varied.pop("method.kind", None)
    words += [str(kind)] if kind else []
    words += [f"{key.rsplit('.', 1)[-1]}={_value(value)}" for key, value in sorted(varied.items())]
    if "training.seed" in sample and search.config.search.seeds:
        words.append(f"seed={sample['training.seed']}")
    return " ".join(words) or search.config.method.kind


def _result_before(trial: Trial) -> dict[str, Any]:
    """The trial's last result as Tune holds it before the one being handed out: in a resumed sweep, from the
    search's saved state (or the checkpoint Tune restored the trial from). Read from its run metadata, not
    ``Trial.last_result``, which asks the trial's process for default values where it is empty."""
    metadata = getattr(trial, "run_metadata", None)
    result = metadata.last_result if metadata is not None else getattr(trial, "last_result", None)
    return result or {}


def _state(trial: Trial, final: dict | None = None) -> TrialState:
    """A trial's state for the progress; ``final``: its final result, handed out before Tune marks it ended."""
    ended = final is not None and trial.status not in ("TERMINATED", "ERROR")
    result = final if ended else _result_before(trial)
    status = "TERMINATED" if ended else trial.status
    return TrialState(status, int(result.get("epoch", 0) or 0), float(result.get("time_total_s", 0.0) or 0.0))


class Console:
    """The sweep's console; :meth:`callback` gives each search its Tune callback."""

    def __init__(self, interval: float = STATUS_INTERVAL, stream=None) -> None:
        _active[0] = self
        self.interval = interval
        self.stream = stream
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._last_status = time.monotonic()
        self._trials: dict[str, list[Trial]] = {}  # search name -> its trials
        self._plans: dict[str, SearchPlan] = {}  # search name -> what it plans (every search, started or not)
        self._epochs: dict[str, int] = {}  # search name -> training.epochs (a search without a plan)
        self._finals: dict[str, dict] = {}  # trial id -> its final result (Tune marks the trial ended later)
        self.changed = False  # a trial reported or failed since the last status table

    def print(self, text: str) -> None:
        with self._lock:
            print(text, file=self.stream or sys.stdout, flush=True)

    def callback(
        self,
        name: str,
        language: str,
        label: Callable[[dict[str, Any]], str],
        metric: str,
        epochs: int,
        log: Callable[[Trial], str],
    ) -> "SearchConsole":
        """The Tune callback of one search (``name``): ``label`` names a trial from its Tune config,
        ``log`` gives its log file."""
        self._epochs[name] = epochs
        return SearchConsole(self, name, language, label, metric, epochs, log)

    def plan(self, plans: dict[str, SearchPlan]) -> None:
        """The plan of every search of the sweep, before they start: the progress counts the trials of the searches
        not started yet, and those their searchers have not made yet, as pending."""
        self._plans = dict(plans)

    def update(self, name: str, trials: list[Trial]) -> None:
        """A search's trials, as its Tune loop sees them; prints the status table when one is due."""
        self._trials[name] = trials
        now = time.monotonic()
        if self.changed and now - self._last_status >= self.interval:
            self._last_status, self.changed = now, False
            self.print(self.status())

    def progress(self) -> Progress:
        """The progress of every search the sweep planned (before it planned them, of those under way: stage 1's,
        whose plan is the trials Tune has made)."""
        out = {}
        for name in list(self._plans or self._trials):  # (other searches' threads add theirs)
            states = [_state(t, self._finals.get(t.trial_id)) for t in self._trials.get(name, [])]
            plan = self._plans.get(name)
            if plan is None:
                plan = SearchPlan(len(states), len(states) * self._epochs.get(name, 1), max(len(states), 1))
            out[name] = search_progress(plan, states)
        return Progress(out)

    def status(self) -> str:
        from tabulate import tabulate

        progress = self.progress()
        rows = [
            [
                name,
                f"{p.done}/{'≤' if p.trials_bound else ''}{p.planned}",
                p.running,
                p.pending,
                p.failed,
                f"{math.floor(p.epochs_done)}/{'≤' if p.bound else ''}{p.epochs}",
            ]
            for name, p in progress.searches.items()
        ]
        head = progress.line(time.monotonic() - self.started)
        headers = ["search", "done", "running", "pending", "failed", "epochs"]
        return head + "\n" + tabulate(rows, headers=headers, disable_numparse=True) + "\n"


class SearchConsole(ray.tune.Callback):
    """A search's Tune callback; saved with the search's state (Tune pickles its callbacks), it prints to
    the console of the process that runs it, so a resumed search prints to the resumed sweep's console."""

    def __init__(
        self,
        console: Console,
        name: str,
        language: str,
        label: Callable[[dict[str, Any]], str],
        metric: str,
        epochs: int,
        log: Callable[[Trial], str],
    ) -> None:
        self._console, self.name, self.language, self.label = console, name, language, label
        self.metric, self.epochs, self.log = metric, epochs, log
        self._shown: dict[str, tuple[int, bool]] = {}  # trial id -> the last epoch printed, and whether "done"

    @property
    def console(self) -> Console:
        return self._console or _active[0] or Console()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_console": None, "_shown": {}}  # what this process printed

    def _new(self, trial: Trial, result: dict) -> bool:
        """Whether to print a result (and note it): a result reported again after a restart only where this
        console has not printed that epoch (or the trial's end) and, in a resumed sweep, the search's saved state
        did not hold it either (Tune hands callbacks a result before it becomes the trial's ``last_result``)."""
        shown = getattr(self, "_shown", None)
        if shown is None:  # a callback saved before this field was
            shown = self._shown = {}
        if trial.trial_id not in shown:
            before = _result_before(trial)
            shown[trial.trial_id] = (int(before.get("epoch", 0) or 0), bool(before.get("final")))
        last, done = shown[trial.trial_id]
        epoch, final = int(result.get("epoch", 0) or 0), bool(result.get("final"))
        if result.get(REPLAYED_KEY) and (done if final else epoch <= last):
            return False
        shown[trial.trial_id] = (max(last, epoch), done or final)
        return True

    def _who(self, trial: Trial) -> str:
        return f"{self.language:<4} {self.label(trial.config):<28} ({trial.trial_id})"

    def on_step_end(self, iteration: int, trials: list[Trial], **info) -> None:
        self.console.update(self.name, trials)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        self.console.changed = True
        if not self._new(trial, result):
            return
        elapsed = _duration(result.get("time_total_s", 0.0))
        again = "  (reported again after a restart)" if result.get(REPLAYED_KEY) else ""
        if result.get("final"):
            tests = [
                f"{k} {v:.2f}" for k, v in sorted(result.items()) if k.startswith("test/") and isinstance(v, float)
            ]
            self.console.print(
                f"{self._who(trial)}  done: best epoch {result.get('best_epoch')}  {'  '.join(tests)}  {elapsed}{again}"
                + self._so_far(trials, trial, result)
            )
            return
        if not isinstance(result.get(self.metric), (int, float)):
            return
        words = [self._who(trial), f"epoch {int(result.get('epoch', 0))}/{self.epochs}"]
        if isinstance(result.get("train/loss"), float):
            words.append(f"loss {result['train/loss']:.3f}")
        words += [f"{self.metric} {result[self.metric]:.2f}", elapsed]
        self.console.print("  ".join(words) + again)

    def _so_far(self, trials: list[Trial], ending: Trial, final: dict) -> str:
        """The sweep's trials done and its ETA, as a trial ends (once the sweep has planned its searches)."""
        console = self.console
        console._finals[ending.trial_id] = final
        if self.name not in console._plans:
            return ""
        console._trials[self.name] = trials
        return f"  [{console.progress().short()}]"

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.console.changed = True
        self.console.print(f"{self._who(trial)}  FAILED: {trial_error(trial)}\n    its log: {self.log(trial)}")

"""What a person sees of a sweep while it runs (everything else is in the log files).

One :class:`Console` per sweep, shared by its searches (their Tune loops run in threads of the driver),
prints one line per trial per epoch (the trial, its language, epoch, training loss, validation metric,
elapsed time), a line when a trial ends, a status table of every search at most every ``interval``
seconds, and for a trial that fails, what Ray reported and where the trial's full log is. A restarted trial
reports its earlier epochs again (``replayed``, :func:`flare_ray.training.loop._replay`): the console prints
only those it has not shown, and says so.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import Counter
from typing import Any, Callable

import ray.tune
from ray.tune.experiment import Trial

from flare_ray.tracking.callback import trial_error
from flare_ray.training.checkpoints import REPLAYED_KEY

from .searches import Search, configuration, seeded

STATUS_INTERVAL = 60.0  # seconds between status tables
_active: list["Console | None"] = [None]  # the console of this process's sweep (the latest made)


def _value(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def describe(search: Search, config: dict[str, Any]) -> str:
    """A trial in a few words: its method, what it varied and its seed (``flare fusion=add seed=1``)."""
    sample = seeded(config, search.config.search.seed_list)
    varied = configuration(sample, search.cell)
    kind = varied.pop("method.kind", None)
    words = [str(kind)] if kind else []
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


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds} s" if seconds < 60 else f"{seconds // 60} min {seconds % 60:02d} s"


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
        return SearchConsole(self, name, language, label, metric, epochs, log)

    def update(self, name: str, trials: list[Trial]) -> None:
        """A search's trials, as its Tune loop sees them; prints the status table when one is due."""
        self._trials[name] = trials
        now = time.monotonic()
        if self.changed and now - self._last_status >= self.interval:
            self._last_status, self.changed = now, False
            self.print(self.status())

    def status(self) -> str:
        from tabulate import tabulate

        rows, total = [], Counter()
        for name, trials in self._trials.items():
            counts = Counter(t.status for t in trials)
            total.update(counts)
            rows.append([name, counts["TERMINATED"], counts["RUNNING"], counts["PENDING"], counts["ERROR"]])
        head = (
            f"status after {_duration(time.monotonic() - self.started)}: {total['TERMINATED']} done, "
            f"{total['RUNNING']} running, {total['PENDING']} pending, {total['ERROR']} failed"
        )
        return head + "\n" + tabulate(rows, headers=["search", "done", "running", "pending", "failed"]) + "\n"


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
            )
            return
        if not isinstance(result.get(self.metric), (int, float)):
            return
        words = [self._who(trial), f"epoch {int(result.get('epoch', 0))}/{self.epochs}"]
        if isinstance(result.get("train/loss"), float):
            words.append(f"loss {result['train/loss']:.3f}")
        words += [f"{self.metric} {result[self.metric]:.2f}", elapsed]
        self.console.print("  ".join(words) + again)

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.console.changed = True
        self.console.print(f"{self._who(trial)}  FAILED: {trial_error(trial)}\n    its log: {self.log(trial)}")

"""Running the searches of a sweep at once: one ``Tuner`` per search, each in a thread of the driver, all
sharing the cluster (Ray schedules their trials as resources free up).

Two things Tune does not do for Tuners in threads, done here:

* **start one at a time**: Tune's trainable registry is not thread-safe while a Tuner starts, so each
  search starts after the previous one has set up (:class:`SearchControl`'s ``setup``);
* **Ctrl-C**: Tune catches SIGINT only in the main thread. The driver's handler asks every search to
  stop; each one keeps running until Tune has saved its experiment state once more (at most
  ``TUNE_GLOBAL_CHECKPOINT_S`` seconds), stops in the step of that save, and ``--resume`` continues all
  of them (the MLflow callback deletes the runs of trials that started after the last state that
  reached storage).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import ray.tune

T = TypeVar("T")
CHECKPOINT_SECONDS = 2.0  # Tune's experiment-state period for local storage (TUNE_GLOBAL_CHECKPOINT_S)
_USER_PERIOD = "TUNE_GLOBAL_CHECKPOINT_S" in os.environ  # set by the user: kept as it is


def set_checkpoint_period(trials: int) -> None:
    """Tune's experiment-state period for a search of ``trials`` trials: every save writes every trial's
    state, so a period fixed at :data:`CHECKPOINT_SECONDS` would cost a long search time quadratic in its
    trials; one more second per 100 trials keeps it linear (and Ctrl-C's wait short for short searches)."""
    if not _USER_PERIOD:
        os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = str(max(CHECKPOINT_SECONDS, trials / 100))


_STARTED: dict[str, threading.Event] = {}
_INTERRUPT = threading.Event()
_interrupted_at = [0.0]


class Interrupted(RuntimeError):
    """Raised inside a search's Tune loop after Ctrl-C, once its state is saved."""


def _checkpoint_period() -> float:
    try:
        return float(os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "10"))
    except ValueError:  # "auto": at least 10 s
        return 10.0


class SearchControl(ray.tune.Callback):
    """In every search's Tune loop: says when it has started, and stops it after Ctrl-C, at the end of the
    first step that saved the experiment state after the interrupt (nothing starts between that save and
    the stop)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._saved_at = 0.0

    def setup(self, **info) -> None:
        if self.name in _STARTED:
            _STARTED[self.name].set()

    def get_state(self) -> None:
        """Tune asks every callback for its state as it saves the experiment state: note when."""
        self._saved_at = time.time()
        return None  # nothing to save

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if not _INTERRUPT.is_set():
            return
        if self._saved_at > _interrupted_at[0] or time.time() - _interrupted_at[0] > _checkpoint_period() + 1:
            raise Interrupted(f"search {self.name} interrupted; its state is saved")


def run_concurrently(names: list[str], fit: Callable[[str], T]) -> dict[str, T | None]:
    """``fit(name)`` for every search at once; None for a search that was interrupted.

    Raises KeyboardInterrupt after the searches stopped if the user pressed Ctrl-C."""
    _INTERRUPT.clear()
    results: dict[str, T | None] = {}

    def one(name: str) -> T | None:
        try:
            return fit(name)
        except Interrupted:
            return None
        finally:
            _STARTED[name].set()  # a search that failed before its setup must not hold up the others

    previous = None
    if threading.current_thread() is threading.main_thread():

        def on_sigint(_signum, _frame):
            _interrupted_at[0] = time.time()
            _INTERRUPT.set()
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C stops at once
            print(
                "interrupted: saving the state of every search (a few seconds; Ctrl-C again to stop now)",
                file=sys.stderr,
                flush=True,
            )

        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        with ThreadPoolExecutor(max_workers=max(len(names), 1), thread_name_prefix="search") as pool:
            futures = {}
            for name in names:
                _STARTED[name] = threading.Event()
                futures[name] = pool.submit(one, name)
                while not _STARTED[name].wait(0.2):  # the next search starts once this one has set up
                    if futures[name].done():
                        break
                if _INTERRUPT.is_set():
                    break
            for name, future in futures.items():
                results[name] = future.result()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        for name in names:
            _STARTED.pop(name, None)
    if _INTERRUPT.is_set():
        raise KeyboardInterrupt
    return results

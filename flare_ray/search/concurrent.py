"""Running the searches of a sweep at once: one ``Tuner`` per search, each in a thread of the driver, all
sharing the cluster (Ray schedules their trials as resources free up).

Two things Tune does not do for Tuners in threads, done here:

* **start one at a time**: Tune's trainable registry is not thread-safe while a Tuner starts, so each
  search starts after the previous one has set up (:class:`SearchControl`'s ``setup``);
* **Ctrl-C**: Tune catches SIGINT only in the main thread. The driver's handler asks every search to
  stop; each one saves its experiment state at the end of its next step of Tune's loop (where Tune's
  controller cannot be found, it waits for Tune's next periodic save: at most ``TUNE_GLOBAL_CHECKPOINT_S``
  seconds), stops in the step of that save, and ``--resume`` continues all of them (the MLflow callback
  deletes the runs of trials that started after the last state that reached storage). Searches not yet
  started do not start. A second Ctrl-C stops at once: each search resumes from the last state it saved.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

import ray.tune

log = logging.getLogger(__name__)
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


class SearchesSaved(KeyboardInterrupt):
    """Ctrl-C stopped the searches, each once it had saved its state (a second Ctrl-C raises a plain
    KeyboardInterrupt: stopped at once)."""


def _checkpoint_period() -> float:
    try:
        return float(os.environ.get("TUNE_GLOBAL_CHECKPOINT_S", "10"))
    except ValueError:  # "auto": at least 10 s
        return 10.0


class SearchControl(ray.tune.Callback):
    """In every search's Tune loop: says when it has started, and stops it after Ctrl-C, at the end of the
    first step that saved the experiment state after the interrupt (nothing starts between that save and
    the stop). With ``signs``, signs each save of Tune's state before Tune uploads it
    (:func:`~flare_ray.search.resume.sign_staged`), so that ``--resume`` can tell it from a file put there by
    someone else. It is pickled into ``tuner.pkl``: it holds no key."""

    signs = False  # a SearchControl unpickled from an earlier version's tuner.pkl

    def __init__(self, name: str, signs: bool = False) -> None:
        self.name = name
        self.signs = signs
        self._saved_at = 0.0

    def setup(self, **info) -> None:
        if self.name in _STARTED:
            _STARTED[self.name].set()

    def get_state(self) -> None:
        """Tune asks every callback for its state as it saves the experiment state (after it has written the
        experiment and searcher state to its staging folder, before it uploads them): note when, and sign."""
        self._saved_at = time.time()
        if self.signs:
            self._sign()
        return None  # nothing to save

    def _sign(self) -> None:
        from .resume import sign_staged

        controller = _tune_controller()
        if controller is None:
            log.warning("search %s: Tune's controller was not found; its saved state is not signed", self.name)
            return
        try:
            sign_staged(controller._storage)
        except Exception:  # noqa: BLE001 - Tune's save must go on: an unsigned state is refused on --resume
            log.exception("search %s: signing its saved state failed; --resume will refuse it", self.name)

    def on_step_end(self, iteration: int, trials: list, **info) -> None:
        if not _INTERRUPT.is_set():
            return
        if self._saved_at <= _interrupted_at[0]:  # save now, not at Tune's next period (minutes for a long search)
            controller = _tune_controller()
            if controller is not None:
                controller.checkpoint(force=True, wait=True)  # as Tune does when it catches Ctrl-C itself
        if self._saved_at > _interrupted_at[0] or time.time() - _interrupted_at[0] > _checkpoint_period() + 1:
            raise Interrupted(f"search {self.name} interrupted; its state is saved")


def _tune_controller():
    """The ``TuneController`` whose loop calls the callback that calls this (Tune hands callbacks no handle on
    it): found up the stack; None where Tune's internals differ."""
    try:
        from ray.tune.execution.tune_controller import TuneController
    except ImportError:
        return None
    frame = sys._getframe(1)
    while frame is not None:
        if isinstance(frame.f_locals.get("self"), TuneController):
            return frame.f_locals["self"]
        frame = frame.f_back
    return None


def request_stop() -> None:
    """Stop the searches as Ctrl-C does (each saves its state first; ``--resume`` continues), without its
    console line: for a stop the caller explains itself (a full disk, :mod:`flare_ray.search.disk`)."""
    _interrupted_at[0] = time.time()
    _INTERRUPT.set()


def run_concurrently(names: list[str], fit: Callable[[str], T]) -> dict[str, T | None]:
    """``fit(name)`` for every search at once; None for a search that was interrupted.

    Raises :class:`SearchesSaved` after the searches stopped if the user pressed Ctrl-C, and KeyboardInterrupt
    at once, without waiting for the searches' threads, if they pressed it again. A stop requested before
    (:func:`request_stop`) stops each search at its first step."""
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
    pool = ThreadPoolExecutor(max_workers=max(len(names), 1), thread_name_prefix="search")
    at_once = False
    try:
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
    except KeyboardInterrupt:  # Ctrl-C again: leave the searches' threads to Ray's shutdown
        at_once = True
        raise
    finally:
        pool.shutdown(wait=not at_once, cancel_futures=at_once)
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        for name in names:
            _STARTED.pop(name, None)
        stopped = _INTERRUPT.is_set()
        _INTERRUPT.clear()  # for the next sweep of this process
    if stopped:
        raise SearchesSaved
    return results

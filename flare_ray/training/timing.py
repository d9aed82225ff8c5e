"""Where a run's wall time goes: a :class:`Clock` of named phases (``time.perf_counter``).

A trial's recipe times its phases with it and reports the seconds of each, so far, with every result
(:meth:`Clock.metrics`: ``time/<phase>``, ``time/other`` and ``time/wall``), which the MLflow callback logs on
the trial's run and the sweep sums on its parent run. The phases (:data:`PHASES`):

* ``startup``: from the trial's start (Tune calling its function) to its recipe's first line: the trial's
  process, imports, and with Ray Train its worker group;
* ``setup``: the splits, the base model (with stage 1 merged in), the adapter and the optimizer; a restarted
  run's checkpoint, read back and its results reported again;
* ``source_cache``: building, or waiting for and reading, the sweep's shared FLARE source cache (stage 1 is
  trained by the sweep before any trial starts: no trial waits for it);
* ``data``: waiting for the training batches (the data loader's collation: tokenizing);
* ``train_steps``: forward, backward and optimizer steps (the sweep's goodput);
* ``validation``: scoring the validation split (its metric and loss), every epoch;
* ``checkpoint``: writing every epoch's checkpoint and handing it, with the epoch's result, to Tune (which
  copies it to storage and returns once it has taken the result);
* ``test``: restoring the best epoch's adapter and scoring the test split;
* ``other``: the rest of the wall time (between phases).

``time/wall`` runs from the trial's start to the result that carries it; the last result's figures stop
before its own checkpoint is written (a result cannot time its own report). A run restarted after a failure
carries on the figures of the checkpoint it continues from (:meth:`Clock.carry`); the time it lost after that
checkpoint is in no figure.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Iterator

PREFIX = "time/"
PHASES = ("startup", "setup", "source_cache", "data", "train_steps", "validation", "checkpoint", "test")
OTHER, WALL = "other", "wall"


class Clock:
    """Seconds per named phase of one run, and its wall time since ``started`` (``time.time()`` where the run
    began, maybe in another process; None: now)."""

    def __init__(self, started: float | None = None) -> None:
        before = max(time.time() - started, 0.0) if started else 0.0  # (another node's clock may run ahead)
        self._origin = time.perf_counter() - before
        self.seconds: dict[str, float] = dict.fromkeys(PHASES, 0.0)
        self.seconds["startup"] = before
        self._carried = 0.0  # wall time of the attempts before a restart

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Within: time that counts for phase ``name`` (phases do not nest)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        if name not in self.seconds:
            raise KeyError(f"no phase {name!r} (the phases: {', '.join(PHASES)})")
        self.seconds[name] += seconds

    def wall(self) -> float:
        return self._carried + time.perf_counter() - self._origin

    def metrics(self) -> dict[str, float]:
        """``time/<phase>`` for every phase, ``time/other`` (the wall time in none) and ``time/wall``, in seconds."""
        wall = self.wall()
        out = {f"{PREFIX}{name}": seconds for name, seconds in self.seconds.items()}
        out[f"{PREFIX}{OTHER}"] = max(wall - sum(self.seconds.values()), 0.0)
        out[f"{PREFIX}{WALL}"] = wall
        return out

    def carry(self, earlier: dict[str, Any]) -> None:
        """Add the figures of an earlier attempt (a result's ``time/*``, as :meth:`metrics` gave them) to this
        one's: a run restarted after a failure accounts for the time up to the checkpoint it continues from."""
        for name in self.seconds:
            self.seconds[name] += float(earlier.get(f"{PREFIX}{name}", 0.0) or 0.0)
        self._carried += float(earlier.get(f"{PREFIX}{WALL}", 0.0) or 0.0)


def figures(result: dict[str, Any]) -> dict[str, float]:
    """The ``time/*`` figures of a result (a reported dict, or a run's metrics)."""
    return {k: float(v) for k, v in result.items() if k.startswith(PREFIX) and isinstance(v, (int, float))}

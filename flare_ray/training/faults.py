"""Faults injected on purpose: how the tests prove that a sweep survives what clusters do to trials.

Never set in normal use. ``FLARE_RAY_FAULTS`` holds a JSON object. The processes that train read it from their
environment: a local Ray's workers inherit the command's, and on a cluster the tune command passes it on in
its job's ``runtime_env``.

* ``{"nan_loss": {"seed": 1, "step": 2}}``: the trial whose ``training.seed`` is 1 gets a NaN training loss at
  step 2 of its first epoch (as a diverging run would); the engine must stop it at once.
* ``{"kill_worker": {"epoch": 3, "step": 2, "rank": 0, "marker": "/tmp/killed"}}``: that rank's process kills
  itself with SIGKILL (as the OOM killer or a lost node would) at step 2 of epoch 3, once: the ``marker`` file
  is created first, and no process kills itself while it exists.
"""

from __future__ import annotations

import functools
import json
import os
import signal
from pathlib import Path

ENV = "FLARE_RAY_FAULTS"


@functools.cache
def _faults() -> dict:
    return json.loads(os.environ.get(ENV) or "{}")


def loss(value, *, seed: int, epoch: int, step: int):
    """The loss ``value``, or NaN where a ``nan_loss`` fault is set for this trial's seed and step."""
    fault = _faults().get("nan_loss")
    if fault and fault.get("seed") == seed and epoch == 1 and step == fault.get("step", 1):
        return value * float("nan")
    return value


def step(*, epoch: int, step: int, rank: int) -> None:
    """Where a ``kill_worker`` fault is set for this step and rank (and has not fired yet): SIGKILL this process."""
    fault = _faults().get("kill_worker")
    if not fault or (fault.get("epoch"), fault.get("step", 1), fault.get("rank", 0)) != (epoch, step, rank):
        return
    try:
        Path(fault["marker"]).touch(exist_ok=False)
    except FileExistsError:
        return
    os.kill(os.getpid(), signal.SIGKILL)

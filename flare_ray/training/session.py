"""Where a run's recipe (the trial loop, stage 1) runs and reports: a Ray Train worker, or its own Tune trial.

A trial with several workers (or DeepSpeed) is a Ray Train run: its workers call ``ray.train.report``
and Ray Train's ``TuneReportCallback`` forwards each report to Tune. A single-worker trial does not need
that machinery (a Train controller and its helper actors, a worker process, a queue actor between them:
on a small machine they cost more than the trial), so it runs its recipe in its Tune trial's own
process, holding the worker's resources, and reports to Tune directly (:func:`in_tune_trial`). The
recipe calls only this module, never ``ray.train`` or ``ray.tune``, so it is the same code either way.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import torch

_LOCAL = threading.local()  # set in a Tune trial's thread while it runs a recipe itself


@contextlib.contextmanager
def in_tune_trial() -> Iterator[None]:
    """Within: the recipe runs in this process (a Tune trial, one worker) and reports to Tune."""
    _LOCAL.tune = True
    try:
        yield
    finally:
        _LOCAL.tune = False


def tune_trial() -> bool:
    return getattr(_LOCAL, "tune", False)


def world() -> tuple[int, int]:
    """This worker's rank and the number of workers."""
    if tune_trial():
        return 0, 1
    import ray.train

    context = ray.train.get_context()
    return context.get_world_rank(), context.get_world_size()


def device() -> torch.device:
    if tune_trial():
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")  # Ray sets CUDA_VISIBLE_DEVICES
    import ray.train.torch

    return ray.train.torch.get_device()


def prepare_model(model: torch.nn.Module, move_to_device: bool = True) -> torch.nn.Module:
    """The model on this worker's device; wrapped in DDP when the run has several workers."""
    if tune_trial():
        return model.to(device()) if move_to_device else model
    import ray.train.torch

    return ray.train.torch.prepare_model(model, move_to_device=move_to_device)


@contextlib.contextmanager
def latest_checkpoint() -> Iterator[Path | None]:
    """The run's latest checkpoint as a local folder, where it restarts after a failure (Ray Train's worker
    group, ``search.worker_max_failures``; Tune's trial, ``search.max_failures``); None on a first start."""
    if tune_trial():
        import ray.tune

        checkpoint = ray.tune.get_checkpoint()
    else:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        yield None
        return
    with checkpoint.as_directory() as folder:
        yield Path(folder)


def report(metrics: dict[str, Any], checkpoint: Path | None = None) -> None:
    """Report one result (with a checkpoint folder, which is persisted to the run's storage and then removed)."""
    if tune_trial():
        import ray.tune

        ray.tune.report(metrics, checkpoint=ray.tune.Checkpoint.from_directory(checkpoint) if checkpoint else None)
    else:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(checkpoint) if checkpoint else None)
    if checkpoint is not None:
        shutil.rmtree(checkpoint, ignore_errors=True)  # both copy it to storage before they return

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
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch

from .checkpoints import TRIAL_CONFIG_NAME, Candidate, Restored, newest_good, read_record

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
def latest_checkpoint() -> Iterator[Restored | None]:
    """The run's newest good checkpoint (a local folder, and its place on storage), where it restarts after a
    failure (Ray Train's worker group, ``search.worker_max_failures``; Tune's trial, ``search.max_failures``; a
    sweep resumed after its driver died); None on a first start, or where no checkpoint is good (then the trial
    starts from scratch).

    Ray hands over the checkpoint its saved state knows; the run's folder on storage may hold newer ones (saved
    after the driver last saved its state) and one of them may be damaged. So every checkpoint there is a
    candidate: :func:`~flare_ray.training.checkpoints.newest_good` picks the newest whose files match their
    content hash."""
    given, filesystem, folder = _ray_checkpoint()
    with newest_good(_candidates(given, filesystem, folder)) as chosen:
        yield chosen


def _ray_checkpoint():
    """Ray's checkpoint for this run (or None), and the run's folder on storage with its filesystem (None, None
    where Ray does not say)."""
    if tune_trial():
        import ray.tune

        given = ray.tune.get_checkpoint()
        try:  # Tune's trial folder: <storage>/<search>/<trial>/checkpoint_NNNNNN
            from ray.train._internal.session import get_storage

            storage = get_storage()
            return given, storage.storage_filesystem, storage.trial_fs_path
        except Exception:  # noqa: BLE001 - Ray's developer API moved: only Ray's checkpoint is a candidate
            return given, None, None
    import ray.train

    given = ray.train.get_checkpoint()
    try:  # the Ray Train run's folder: <storage>/train/<trial>/checkpoint_<time>
        storage = ray.train.get_context().get_storage()
        return given, storage.storage_filesystem, storage.experiment_fs_path
    except Exception:  # noqa: BLE001 - as above
        return given, None, None


def _candidates(given, filesystem, folder: str | None) -> list[Candidate]:
    """Ray's checkpoint and every ``checkpoint_*`` folder of the run's folder, each with its trial record."""
    places = [(given.filesystem, given.path)] if given is not None else []
    if filesystem is not None and folder:
        places += [(filesystem, path) for path in _checkpoint_folders(filesystem, folder)]
    return [Candidate(path, _record(fs, path), partial(_fetch, fs, path)) for fs, path in places]


def _checkpoint_folders(filesystem, folder: str) -> list[str]:
    import pyarrow.fs

    try:
        infos = filesystem.get_file_info(pyarrow.fs.FileSelector(folder, allow_not_found=True))
    except OSError:
        return []
    return sorted(
        info.path
        for info in infos
        if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith("checkpoint_")
    )


def _record(filesystem, path: str) -> dict | None:
    """The checkpoint's trial record (small: read in place, before anything is downloaded)."""
    try:
        with filesystem.open_input_stream(f"{path}/{TRIAL_CONFIG_NAME}") as stream:
            return read_record(stream.read())
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def _fetch(filesystem, path: str) -> Iterator[Path]:
    """The checkpoint as a local folder (itself on local storage, a temporary copy otherwise)."""
    import ray.train

    with ray.train.Checkpoint(path, filesystem=filesystem).as_directory() as folder:
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

"""Which of a trial's checkpoints a restart continues from: the newest one whose files match their content hash.

A trial checkpoints every epoch (and last its final result), each checkpoint folder with its ``sha256.json``
written last (:func:`flare_ray.digests.write_manifest`). On a restart, Ray hands the trial the checkpoint its
saved state knows, which may be older than what reached storage (a driver killed between two saves of its
state) or damaged (a truncated file, a folder half written when the process died). So the restart looks at
every checkpoint the run's folder holds: newest first by the progress each records (its ``trial_config.json``),
the first whose files match their hashes wins; a damaged one is passed over with a warning that names the file
and what is wrong; with none good, the trial starts from scratch, saying why.

A checkpoint may reach storage while its epoch's result never reaches the driver (the worker or the driver
died between the two). So each checkpoint's training state keeps the metrics of every epoch trained so far
(``history``), and a restart reports them again before it trains on (:data:`REPLAYED_KEY`): Tune, ASHA, the
console and the MLflow callback then hold every epoch, and each keeps the first copy of an epoch it already
had.

Ray-free: :mod:`flare_ray.training.session` lists the candidates where Ray keeps them and fetches each one.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

from flare_ray.digests import folder_problem

TRIAL_CONFIG_NAME = "trial_config.json"  # as flare_ray.training.evaluate names it (without importing torch)
TRAINED_KEY = "trained_epochs"  # in trial_config.json: the epochs trained when the checkpoint was written
# In a result reported again after a restart (the MLflow callback and the console read these keys by name):
REPLAYED_KEY = "replayed"  # 1: an epoch's (or the final) result as first reported, sent again after a restart
REPLAYED_CHECKPOINT_KEY = "replayed_checkpoint"  # on the last one: the checkpoint the run continues from


@dataclass(frozen=True)
class Restored:
    """The checkpoint a restart continues from: a local folder with its files, and where it is on storage (a
    path in the storage's filesystem, as Ray gives checkpoint paths), which the results it reports again name."""

    folder: Path
    where: str


@dataclass(frozen=True)
class Candidate:
    """One checkpoint of a run: where it is (for messages), its ``trial_config.json`` as read from there (None:
    missing or unreadable), and how to get it as a local folder."""

    where: str
    record: dict | None
    fetch: Callable[[], ContextManager[Path]]


def progress(record: dict | None) -> tuple[int, int]:
    """How far a checkpoint got: (1 if it holds the final result, epochs trained). A checkpoint written before
    ``trained_epochs`` was recorded held a new best epoch: its ``epoch``."""
    if not isinstance(record, dict):
        return (-1, -1)
    trained = record.get(TRAINED_KEY, record.get("epoch", 0))
    return (int(bool(record.get("final"))), int(trained) if isinstance(trained, (int, float)) else 0)


def read_record(text: str | bytes | None) -> dict | None:
    """A ``trial_config.json``'s content, or None where it is not a JSON object."""
    if text is None:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


@contextlib.contextmanager
def newest_good(candidates: list[Candidate], warn: Callable[[str], None] | None = None) -> Iterator[Restored | None]:
    """The newest of ``candidates`` whose files match their manifest, as a local folder and its place on storage
    (None: no checkpoint, or none good; then the trial starts from scratch). Every checkpoint passed over is
    warned about, by name."""
    warn = warn or _warn
    ordered = sorted(_distinct(candidates), key=lambda c: progress(c.record), reverse=True)
    passed: list[str] = []
    for candidate in ordered:
        with contextlib.ExitStack() as stack:
            try:
                folder = stack.enter_context(candidate.fetch())
            except (OSError, ValueError) as err:
                problem = f"{candidate.where} could not be read ({type(err).__name__}: {err})"
            else:
                problem = folder_problem(Path(folder))
                if problem is None:
                    if passed:
                        warn(f"continuing from the checkpoint {candidate.where}, the newest good one")
                    yield Restored(Path(folder), candidate.where)
                    return
            passed.append(problem)
            warn(f"checkpoint {candidate.where} is not usable, passed over: {problem}")
    if passed:
        warn(f"no usable checkpoint among {len(passed)}: the trial starts from scratch ({'; '.join(passed)})")
    yield None


def _distinct(candidates: list[Candidate]) -> list[Candidate]:
    seen: dict[str, Candidate] = {}
    for candidate in candidates:
        seen.setdefault(candidate.where.rstrip("/"), candidate)
    return list(seen.values())


def _warn(message: str) -> None:
    """Printed: the trial's log keeps it (and Ray shows it on the console)."""
    print(f"WARNING: {message}", flush=True)

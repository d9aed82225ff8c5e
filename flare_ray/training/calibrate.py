"""A short calibration of a trial's setup, for the sweep's cost estimate (``flare-ray tune --estimate``,
:mod:`flare_ray.search.estimate`): a few optimizer steps and one validation and test batch, timed, with the
trial's own setup (:func:`~flare_ray.training.setup.build_trial`), engine and scoring, not a second loop.

What it measures, in seconds: one optimizer step (its batches' loading included; timed on a second pass over
the same batches: the trial's steps run warm and, with FLARE, read their source rows from the source cache that
the trial builds before its first step, whose build is not timed), the setup, the start-up (from the moment the
calibration was asked for to the end of the recipe's imports: a new process's, as a trial's first on its slot),
a whole validation of the split (metric and loss: one batch, timed after a first one, times the split's
batches), the test likewise, and one checkpoint (the adapter and the training state saved, and copied once).
It runs on one worker: with several, a rank's share of the records is what each step reads, and DDP's gradient
exchange is not timed.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

from flare_ray.experiment import ExperimentConfig


def calibrate(experiment: ExperimentConfig, language: str, steps: int = 3, submitted: float | None = None) -> dict:
    """The seconds of ``experiment``'s setup (see the module): ``step``, ``startup``, ``setup``, ``validation``
    (per epoch), ``checkpoint`` (per epoch), ``test``. ``submitted``: ``time.time()`` where the calibration was
    asked for (its start-up runs from there)."""
    from . import session
    from .adapter import METHODS
    from .engine import Engine
    from .evaluate import RESUME_NAME, evaluate
    from .setup import build_trial, train_loader
    from .source_cache import attach_source_cache
    from .state_files import save_state

    startup = time.time() - submitted if submitted else 0.0
    experiment = experiment.model_copy(update={"model": experiment.model.model_copy(update={"stage1": None})})
    training = experiment.training
    out = {"startup": startup, "step": 0.0, "checkpoint": 0.0}
    with session.in_tune_trial():
        started = time.perf_counter()
        trial = build_trial(experiment, language)
        engine = None
        if METHODS[experiment.method.kind].trains:
            per_step = training.batch_size * training.grad_accumulation
            train = trial.splits["train"]
            timed = train.select(range(min(per_step * steps, len(train))))
            engine = Engine(
                trial.model,
                training,
                experiment.scaling,
                2 * math.ceil(len(timed) / per_step),  # two passes: the warm one and the timed one
                quantized=experiment.model.quantization != "none",
            )
            attach_source_cache(trial.model, experiment, engine.zero3)  # FLARE: this process's, as a trial's
        out["setup"] = time.perf_counter() - started
        model = engine.unwrapped if engine is not None else trial.model.to(session.device())
        if engine is not None:
            engine.train_epoch(train_loader(timed, trial.encoder, training, 0, 1), 1)  # warms up (fills the cache)
            engine.train_epoch(train_loader(timed, trial.encoder, training, 0, 1), 2)
            taken = math.ceil(math.ceil(len(timed) / training.batch_size) / training.grad_accumulation)
            out["step"] = (engine.timing["train_steps"] + engine.timing["data"]) / taken
            folder = Path(tempfile.mkdtemp(prefix="calibrate-"))
            started = time.perf_counter()
            save_state({**engine.training_state(), "adapter": engine.adapter_state()}, folder / RESUME_NAME)
            engine.unwrapped.save_pretrained(folder)
            shutil.copytree(folder, f"{folder}-copy")  # as the report hands it to storage
            out["checkpoint"] = time.perf_counter() - started
            for done in (folder, f"{folder}-copy"):
                shutil.rmtree(done, ignore_errors=True)
        context = engine.autocast() if engine is not None else _nothing()
        with context:
            for split, loss in (("validation", True), ("test", False)):
                records = trial.splits[split]
                batch = records.select(range(min(training.eval_batch_size, len(records))))
                for _ in range(2):  # the second is timed
                    started = time.perf_counter()
                    evaluate(trial.task, trial.encoder, model, batch, training, split, 0, loss=loss)
                    seconds = time.perf_counter() - started
                out[split] = seconds * math.ceil(len(records) / training.eval_batch_size)
    return out


def _nothing():
    import contextlib

    return contextlib.nullcontext()

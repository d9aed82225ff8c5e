"""What a recipe's worker loop receives: the fixed inputs of one run, the same on every worker.

The search builds them where it starts a run (a Tune trial, the stage-1 run) and hands them down as they
are, through Ray (they pickle with the validated experiment config in them, which is never validated
again). This module imports nothing heavy: a trial's driver builds them without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

from flare_ray.experiment import ExperimentConfig


@dataclass(frozen=True)
class TrialInput:
    """One trial of a search, for :func:`flare_ray.training.loop.train_loop_per_worker`."""

    experiment: ExperimentConfig  # the trial's config, Tune's sample written in (validated once, by the driver)
    language: str  # the target language it trains and scores
    log_file: str | None = None  # where the worker keeps its output (prints, library messages, a crash)
    trial_started: float | None = None  # when Tune started the trial (time.time()): its first step is timed from it


@dataclass(frozen=True)
class Stage1Input:
    """The stage-1 run, for :func:`flare_ray.training.stage1.stage1_loop_per_worker`."""

    experiment: ExperimentConfig  # the experiment as stage 1 runs it (stage1_experiment)
    output: str  # where rank 0 writes the adapter: a local folder or a URI (s3://...)
    fingerprint: str | None = None  # the key of what it depends on (ensure_stage1), kept in its stage1.json
    log_file: str | None = None  # where the worker keeps its output

"""Stage 1 as a run of its own: one Tune trial (the trials' resources and scaling) that trains the English
stage-1 adapter with :func:`flare_ray.training.stage1.stage1_loop_per_worker`, its epochs on the console
like a trial's, its output in ``<storage_path>/logs/<sweep>-stage1/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.tune

from flare_ray.experiment import ExperimentConfig
from flare_ray.logs import tee_output
from flare_ray.secrets import keep_out_of_runtime_envs
from flare_ray.storage import join, local_path
from flare_ray.training.inputs import Stage1Input

from .console import Console
from .trial import run, trial_log, trial_resources


def stage1_entry(inputs: Stage1Input) -> None:
    if inputs.log_file:
        tee_output(inputs.log_file)
    from flare_ray.training.stage1 import stage1_loop_per_worker

    stage1_loop_per_worker(inputs)


def _stage1_trial(_: dict[str, Any], *, inputs: Stage1Input, name: str) -> None:
    run(inputs.experiment.scaling, stage1_entry, inputs, name, join(inputs.experiment.storage_path, "train"))


def train_stage1(
    experiment: ExperimentConfig, output: str | Path, key: str | None = None, console: Console | None = None
) -> str | Path:
    """Train stage 1 of ``experiment`` into ``output`` (a local folder, or a URI such as ``s3://...``) as a
    one-trial Tune run, its epochs on ``console``."""
    from flare_ray.training.stage1 import stage1_done, stage1_experiment

    keep_out_of_runtime_envs()  # the trial inherits the AWS credentials; Ray would log them
    stage1 = stage1_experiment(experiment)
    output = local_path(str(output))
    name = f"{experiment.name}-stage1-{key or 'manual'}"
    log = trial_log(experiment.storage_path, f"{experiment.name}-stage1", key or "manual")
    inputs = Stage1Input(stage1, str(output), fingerprint=key, log_file=str(log))
    console = console or Console()
    console.print(f"stage 1: training the English adapter {key or output} (its log: {log})")
    metric = stage1.search.metric.replace("validation/", "english_validation/")
    callbacks = [
        console.callback(
            f"{experiment.name}-stage1", "en", lambda _: "stage 1", metric, stage1.training.epochs, lambda _: str(log)
        )
    ]
    trainable = ray.tune.with_resources(
        ray.tune.with_parameters(_stage1_trial, inputs=inputs, name=name), trial_resources(stage1.scaling)
    )
    grid = ray.tune.Tuner(
        trainable,
        param_space={},
        run_config=ray.tune.RunConfig(name=name, storage_path=experiment.storage_path, callbacks=callbacks, verbose=0),
    ).fit()
    if grid.errors:
        raise RuntimeError(f"stage 1 failed (its log: {inputs.log_file}): {grid.errors[0]}") from grid.errors[0]
    return stage1_done(output)

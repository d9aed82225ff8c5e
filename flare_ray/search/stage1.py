"""Stage 1 as a run of its own: one Tune trial (the trials' resources and scaling) that trains the English
stage-1 adapter with :func:`flare_ray.training.stage1.stage1_loop_per_worker`, its epochs on the console
like a trial's, its output in ``<storage_path>/logs/<sweep>-stage1/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.tune

from flare_ray.experiment import ExperimentConfig
from flare_ray.logs import tee_output
from flare_ray.storage import join, local_path

from .console import Console
from .trial import LOG_KEY, run, trial_log, trial_resources


def stage1_entry(loop_config: dict[str, Any]) -> None:
    if loop_config.get(LOG_KEY):
        tee_output(loop_config[LOG_KEY])
    from flare_ray.training.stage1 import stage1_loop_per_worker

    stage1_loop_per_worker(loop_config)


def _stage1_trial(_: dict[str, Any], *, loop_config: dict[str, Any], name: str) -> None:
    experiment: ExperimentConfig = loop_config["experiment"]
    run(experiment.scaling, stage1_entry, loop_config, name, join(experiment.storage_path, "train"))


def train_stage1(experiment: ExperimentConfig, output: str | Path, key: str | None = None,
                 console: Console | None = None) -> str | Path:
    """Train stage 1 of ``experiment`` into ``output`` (a local folder, or a URI such as ``s3://...``) as a
    one-trial Tune run, its epochs on ``console``."""
    from flare_ray.training.stage1 import stage1_done, stage1_experiment

    stage1 = stage1_experiment(experiment)
    output = local_path(str(output))
    name = f"{experiment.name}-stage1-{key or 'manual'}"
    log = trial_log(experiment.storage_path, f"{experiment.name}-stage1", key or "manual")
    loop_config = {"experiment": stage1, "output": str(output), "fingerprint": key, LOG_KEY: str(log)}
    console = console or Console()
    console.print(f"stage 1: training the English adapter {key or output} (its log: {log})")
    metric = stage1.search.metric.replace("validation/", "english_validation/")
    callbacks = [console.callback(f"{experiment.name}-stage1", "en", lambda _: "stage 1", metric, stage1.training.epochs,
                                  lambda _: str(log))]  # fmt: skip
    trainable = ray.tune.with_resources(ray.tune.with_parameters(_stage1_trial, loop_config=loop_config, name=name),
                                        trial_resources(stage1.scaling))  # fmt: skip
    grid = ray.tune.Tuner(
        trainable, param_space={},
        run_config=ray.tune.RunConfig(name=name, storage_path=experiment.storage_path, callbacks=callbacks,
                                      verbose=0),  # fmt: skip
    ).fit()
    if grid.errors:
        raise RuntimeError(f"stage 1 failed (its log: {loop_config[LOG_KEY]}): {grid.errors[0]}") from grid.errors[0]
    return stage1_done(output)

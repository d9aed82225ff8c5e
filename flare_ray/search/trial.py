"""A Tune trial: the driver function that builds and fits one Ray Train run (Train V2).

Tune samples a flat dict of key paths (``{"method.lora.r": 16, ...}``); the
driver writes it into the experiment config (its one validation) and a
``TorchTrainer`` runs :func:`flare_ray.training.loop.train_loop_per_worker` on
the trial's workers, which receive that validated object as it is.
``TuneReportCallback`` forwards every epoch's report (and the checkpoint path)
to Tune, where ASHA and the MLflow callback see it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from flare_ray.experiment import ExperimentConfig, apply_sample
from flare_ray.storage import join, local_copy
from flare_ray.training.evaluate import TRIAL_CONFIG_NAME, score_adapter
from flare_ray.training.loop import train_loop_per_worker

from .searches import seeded


def run_trial(sample: dict[str, Any], *, experiment: ExperimentConfig, language: str, seeds: list[int | None]) -> None:
    config = apply_sample(experiment, seeded(sample, seeds))
    trial_trainer(config, language, ray.tune.get_context().get_trial_name(), [TuneReportCallback()]).fit()


def trial_trainer(
    config: ExperimentConfig, language: str, name: str, callbacks: list | None = None,
    loop: Callable[[dict[str, Any]], None] = train_loop_per_worker,
) -> TorchTrainer:
    """The Ray Train run of one trial; its workers get ``{"experiment": config, "language": language}``."""
    scaling, search = config.scaling, config.search
    return TorchTrainer(
        loop,
        train_loop_config={"experiment": config, "language": language},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers, use_gpu=scaling.use_gpu, resources_per_worker=scaling.resources_per_worker(),
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=join(config.storage_path, "train"),
            # The loop checkpoints only a new best epoch, and last the best adapter with the predictions:
            # the latest checkpoint is the one to keep.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            failure_config=ray.train.FailureConfig(max_failures=search.worker_max_failures),
            callbacks=callbacks or [],
        ),
    )


def score_checkpoint(checkpoint: str, storage_path: str | None = None, role: str = "test"):
    """Score a trial's checkpoint (a folder, local or on the sweep's storage) from its ``trial_config.json``:
    for the best trial of a search when ASHA stopped it before its own test scoring. The scores
    (``{"test/<metric>": ...}``) and the per-example predictions table."""
    with local_copy(checkpoint, storage_path or checkpoint) as folder:
        record = json.loads((Path(folder) / TRIAL_CONFIG_NAME).read_text())
        experiment = ExperimentConfig.model_validate(record["experiment"])  # the checkpoint's JSON record
        return score_adapter(experiment, record["language"], Path(folder), role, record.get("epoch"))

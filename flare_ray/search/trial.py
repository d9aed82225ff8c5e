"""A Tune trial: the driver function that builds and fits one Ray Train run (Train V2).

Tune samples a flat dict of key paths (``{"method.lora.r": 16, ...}``); the
driver applies it to the experiment config, and a ``TorchTrainer`` runs
:func:`flare_ray.training.loop.train_loop_per_worker` on the trial's workers.
``TuneReportCallback`` forwards every epoch's report (and the checkpoint path)
to Tune, where ASHA and the MLflow callback see it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ray.train
import ray.tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from flare_ray.experiment import ExperimentConfig, apply_sample
from flare_ray.training.loop import train_loop_per_worker


def run_trial(sample: dict[str, Any], *, experiment: dict[str, Any], language: str) -> None:
    config = apply_sample(ExperimentConfig.model_validate(experiment), sample)
    scaling, search = config.scaling, config.search
    trial_name = ray.tune.get_context().get_trial_name()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"experiment": config.model_dump(mode="json"), "language": language},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=scaling.resources_per_worker(),
        ),
        run_config=ray.train.RunConfig(
            name=trial_name,
            storage_path=str(Path(config.storage_path).resolve() / "train"),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=1, checkpoint_score_attribute=search.metric, checkpoint_score_order=search.mode
            ),
            failure_config=ray.train.FailureConfig(max_failures=search.worker_max_failures),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()

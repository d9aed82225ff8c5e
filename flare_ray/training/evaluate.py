"""Scoring: a split's task metrics and loss, and re-scoring a saved trial adapter.

:func:`score_checkpoint` is used for the best trial of a search when ASHA
stopped it before its own final test scoring. The checkpoint folder holds the
adapter and ``trial_config.json`` (the trial's experiment config and
language), which is all it needs; the model is loaded by the trial's own setup
(:func:`flare_ray.training.setup.build_trial`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flare_ray.experiment import ExperimentConfig
from flare_ray.storage import local_copy
from flare_ray.tasks.encoding import TaskEncoder

from .setup import build_trial

TRIAL_CONFIG_NAME = "trial_config.json"


def score(task, encoder: TaskEncoder, model, records, training) -> dict[str, float]:
    """The task's metrics of ``model``'s predictions on ``records`` (eval mode; train mode after)."""
    model.eval()
    predictions = encoder.predict(
        model, list(records), batch_size=training.eval_batch_size, max_new_tokens=training.max_new_tokens
    )
    model.train()
    return task.score(predictions, records)


@torch.no_grad()
def mean_loss(encoder: TaskEncoder, model, records, batch_size: int, device) -> float:
    """The mean training loss (teacher-forced) over ``records``: a smooth curve beside the metric."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(records), batch_size):
        rows = [records[i] for i in range(start, min(start + batch_size, len(records)))]
        inputs = {k: v.to(device) for k, v in encoder.train_batch(rows).inputs.items()}
        total += model(**inputs).loss.item() * len(rows)
        count += len(rows)
    model.train()
    return total / max(count, 1)


def score_checkpoint(checkpoint: str, storage_path: str | None = None, role: str = "test") -> dict[str, float]:
    """``checkpoint``: a trial's adapter folder (with ``trial_config.json``), local or on the sweep's storage."""
    with local_copy(checkpoint, storage_path or checkpoint) as folder:
        info = json.loads((Path(folder) / TRIAL_CONFIG_NAME).read_text())
        experiment = ExperimentConfig.model_validate(info["experiment"])  # the checkpoint's JSON record
        run = build_trial(experiment, info["language"], roles=(role,), adapter=Path(folder))
        return {f"{role}/{k}": v for k, v in score(run.task, run.encoder, run.model, run.splits[role], experiment.training).items()}

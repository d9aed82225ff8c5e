"""Scoring: a split's task metrics and loss, and re-scoring a saved trial adapter (:func:`score_adapter`,
used by :func:`flare_ray.search.trial.score_checkpoint` when ASHA stopped the best trial before its own
test scoring)."""

from __future__ import annotations

from pathlib import Path

import torch

from flare_ray.experiment import ExperimentConfig
from flare_ray.tasks.encoding import TaskEncoder
from flare_ray.tasks.predictions import predictions_frame

from .setup import build_trial

TRIAL_CONFIG_NAME = "trial_config.json"  # beside a checkpoint's adapter: the trial's experiment and language
PREDICTIONS_DIR = "predictions"  # in a checkpoint: <split>.parquet, the per-example predictions
# In a checkpoint: where a restarted run continues; in a folder of its own, so MLflow's adapter/ leaves it out.
RESUME_NAME = "resume"  # a folder: training_state.json + tensors.safetensors (training/state_files.py)


def predict_records(encoder: TaskEncoder, model, records, training) -> list:
    """``model``'s prediction of each record (a label, an answer string, or None), in eval mode."""
    was_training = model.training
    model.eval()
    predictions = encoder.predict(
        model, list(records), batch_size=training.eval_batch_size, max_new_tokens=training.max_new_tokens
    )
    model.train(was_training)
    return predictions


def score(task, encoder: TaskEncoder, model, records, training) -> dict[str, float]:
    """The task's metrics of ``model``'s predictions on ``records`` (in eval mode)."""
    return task.score(predict_records(encoder, model, records, training), records)


def evaluate(
    task,
    encoder: TaskEncoder,
    model,
    records,
    training,
    split: str,
    epoch: int | None = None,
    shard: tuple[int, int] | None = None,
):
    """The metrics of ``model`` on ``records`` and the per-example predictions table (see
    :mod:`flare_ray.tasks.predictions`). ``shard=(rank, world)``: this rank predicts its contiguous share of
    the records, the shares are gathered from every rank (a collective), and every rank scores them all."""
    if shard is None:
        predictions = predict_records(encoder, model, records, training)
    else:
        rank, world = shard
        mine = predict_records(encoder, model, records.shard(num_shards=world, index=rank, contiguous=True), training)
        predictions = [p for part in _all_gather(mine, world) for p in part]
    return task.score(predictions, records), predictions_frame(task, records, predictions, split, epoch)


def _all_gather(value, world: int) -> list:
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, value)
    return gathered


@torch.no_grad()
def mean_loss(
    encoder: TaskEncoder, model, records, batch_size: int, device, shard: tuple[int, int] | None = None
) -> float:
    """The mean training loss (teacher-forced) over ``records``: a smooth curve beside the metric
    (``shard``: as in :func:`evaluate`)."""
    if shard is not None:
        rank, world = shard
        records = records.shard(num_shards=world, index=rank, contiguous=True)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(records), batch_size):
        rows = [records[i] for i in range(start, min(start + batch_size, len(records)))]
        inputs = {k: v.to(device) for k, v in encoder.train_batch(rows).inputs.items()}
        total += model(**inputs).loss.item() * len(rows)
        count += len(rows)
    model.train(was_training)
    if shard is not None:
        total, count = (sum(x) for x in zip(*_all_gather((total, count), shard[1])))
    return total / max(count, 1)


def score_adapter(
    experiment: ExperimentConfig, language: str, folder: Path, role: str = "test", epoch: int | None = None
):
    """A saved trial adapter's scores on ``role`` (``{"test/<metric>": ...}``), loaded by the trial's own setup,
    and its predictions table."""
    run = build_trial(experiment, language, roles=(role,), adapter=folder)
    scores, frame = evaluate(run.task, run.encoder, run.model, run.splits[role], experiment.training, role, epoch)
    return {f"{role}/{k}": v for k, v in scores.items()}, frame

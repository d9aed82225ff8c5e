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


def length_order(encoder: TaskEncoder, rows: list[dict]) -> list[int]:
    """The positions of ``rows``, longest first: evaluation batches of rows of similar length pad less (each batch
    is padded to its longest row). A row's length is the characters of its longest side (its target text fields;
    with the source, the source's too), close enough to its tokens to group them, and free (no tokenizing); ties
    keep the rows' order. The longest batch comes first, so a batch too large for memory fails at once."""
    sides = ("target", "source") if encoder.with_source or encoder.input_fusion else ("target",)

    def length(row: dict) -> int:
        return max(sum(len(str(row.get(f"{side}_{f}") or "")) for f in encoder.task.text_fields) for side in sides)

    lengths = [length(row) for row in rows]
    return sorted(range(len(rows)), key=lambda i: -lengths[i])


def loss_order(encoder: TaskEncoder, rows: list[dict]) -> list[int]:
    """The order in which a pass that computes the loss batches ``rows``: :func:`length_order` where a batch's loss
    is the mean of its rows' own, whatever their padding (a classifier's), else the rows' order. An extractive
    answer's loss is a softmax over every position of the padded row, and a generative model's a mean over its
    batch's answer tokens: another grouping would change the figure."""
    if encoder.generative or encoder.task.labels is None:
        return list(range(len(rows)))
    return length_order(encoder, rows)


def _in_order(values: list, order: list[int]) -> list:
    """``values`` (one per position of ``order``) back in the records' own order."""
    out: list = [None] * len(order)
    for value, i in zip(values, order):
        out[i] = value
    return out


def predict_records(encoder: TaskEncoder, model, records, training) -> list:
    """``model``'s prediction of each record (a label, an answer string, or None), in eval mode; scored in batches
    of rows of similar length (:func:`length_order`), returned in the records' order."""
    rows = list(records)
    order = length_order(encoder, rows)
    was_training = model.training
    model.eval()
    predictions = encoder.predict(
        model, [rows[i] for i in order], batch_size=training.eval_batch_size, max_new_tokens=training.max_new_tokens
    )
    model.train(was_training)
    return _in_order(predictions, order)


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
    loss: bool = False,
):
    """The metrics of ``model`` on ``records`` (with ``loss``: and their mean loss, ``"loss"``, as
    :func:`mean_loss` gives it) and the per-example predictions table (see :mod:`flare_ray.tasks.predictions`).
    ``shard=(rank, world)``: this rank predicts its contiguous share of the records, the shares are gathered from
    every rank (a collective), and every rank scores them all.

    A task head's metric and loss come from one pass over the records (its batches with labels: the loss and the
    logits of one forward); a generative model's loss is a pass of its own (:func:`mean_loss`; the predictions
    are generated)."""
    mine = records if shard is None else records.shard(num_shards=shard[1], index=shard[0], contiguous=True)
    one_pass = loss and not encoder.generative
    if one_pass:
        predictions, total, count = _predict_with_loss(encoder, model, mine, training.eval_batch_size)
    else:
        predictions = predict_records(encoder, model, mine, training)
    if shard is not None:
        predictions = [p for part in _all_gather(predictions, shard[1]) for p in part]
        if one_pass:
            total, count = (sum(x) for x in zip(*_all_gather((total, count), shard[1])))
    scores = task.score(predictions, records)
    if one_pass:
        scores["loss"] = total / max(count, 1)
    elif loss:
        device = next(model.parameters()).device
        scores["loss"] = mean_loss(encoder, model, records, training.eval_batch_size, device, shard=shard)
    return scores, predictions_frame(task, records, predictions, split, epoch)


@torch.no_grad()
def _predict_with_loss(encoder: TaskEncoder, model, records, batch_size: int) -> tuple[list, float, int]:
    """A task head's predictions of ``records`` (in their order) and its summed loss over them, from one forward
    per batch of its batches with labels (batched as :func:`loss_order` says), in eval mode."""
    rows = list(records)
    order = loss_order(encoder, rows)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions: list = []
    total = 0.0
    for start in range(0, len(order), batch_size):
        chunk = [rows[i] for i in order[start : start + batch_size]]
        batch = encoder.train_batch(chunk)
        outputs = model(**{k: v.to(device) for k, v in batch.inputs.items()})
        total += outputs.loss.item() * len(chunk)
        predictions += encoder.decode(outputs, batch)
    model.train(was_training)
    return _in_order(predictions, order), total, len(rows)


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
    (``shard``: as in :func:`evaluate`). Each batch's loss counts for its rows; the batches: :func:`loss_order`."""
    if shard is not None:
        rank, world = shard
        records = records.shard(num_shards=world, index=rank, contiguous=True)
    rows = list(records)
    order = loss_order(encoder, rows)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        chunk = [rows[i] for i in order[start : start + batch_size]]
        inputs = {k: v.to(device) for k, v in encoder.train_batch(chunk).inputs.items()}
        total += model(**inputs).loss.item() * len(chunk)
        count += len(chunk)
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

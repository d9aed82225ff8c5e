"""Scoring: a split's task metrics and loss, and re-scoring a saved trial adapter.

:func:`score_checkpoint` is used for the best trial of a search when ASHA
stopped it before its own final test scoring. The checkpoint folder holds the
adapter and ``trial_config.json`` (the trial's experiment config and
language), which is all it needs; the model is loaded by the same setup as the
trial's (:mod:`flare_ray.training.setup`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flare_ray.experiment import ExperimentConfig
from flare_ray.fusion import FlareModel
from flare_ray.storage import local_copy
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder

from .setup import load_base, task_encoder

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
    """``checkpoint``: a folder, local or on the sweep's remote ``storage_path``."""
    with local_copy(checkpoint, storage_path or checkpoint) as folder:
        return _score_folder(Path(folder), role)


def _score_folder(checkpoint: Path, role: str) -> dict[str, float]:
    info = json.loads((checkpoint / TRIAL_CONFIG_NAME).read_text())
    experiment = ExperimentConfig.model_validate(info["experiment"])
    task = get_task(experiment.task.task_config(info["language"]))
    records = task.load(role)
    base = load_base(experiment, task, gradient_checkpointing=False)
    if experiment.method.kind == "lora":
        from peft import PeftModel

        adapted = PeftModel.from_pretrained(base.model, checkpoint)
    else:
        adapted = FlareModel.from_pretrained(base.model, checkpoint)
    if torch.cuda.is_available() and experiment.model.quantization == "none":  # 4-bit models are placed at load
        adapted.to("cuda")
    encoder = task_encoder(experiment, task, base)
    return {f"{role}/{k}": v for k, v in score(task, encoder, adapted.eval(), records, experiment.training).items()}

"""Scoring a saved trial adapter on a split (the gold test split by default).

Used for the best trial of a search when ASHA stopped it before its own final
test scoring. The checkpoint folder holds the adapter and ``trial_config.json``
(the trial's experiment config and language), which is all this needs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from flare_ray.experiment import ExperimentConfig
from flare_ray.fusion import FlareModel
from flare_ray.models.loading import infer_family, load_model
from flare_ray.storage import local_copy
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder

from .adapter import NEEDS_SOURCE
from .loop import TRIAL_CONFIG_NAME, _score


def score_checkpoint(checkpoint: str, storage_path: str | None = None, role: str = "test") -> dict[str, float]:
    """``checkpoint``: a folder, local or on the sweep's remote ``storage_path``."""
    with local_copy(checkpoint, storage_path or checkpoint) as folder:
        return _score_folder(Path(folder), role)


def _score_folder(checkpoint: Path, role: str) -> dict[str, float]:
    info = json.loads((checkpoint / TRIAL_CONFIG_NAME).read_text())
    experiment = ExperimentConfig.model_validate(info["experiment"])
    method, training = experiment.method, experiment.training
    task = get_task(experiment.task.task_config(info["language"]))
    records = task.load(role)
    name = str(experiment.model.stage1 or experiment.model.name_or_path)
    family = experiment.model.resolved_family() or infer_family(name)
    model, tokenizer = load_model(name, family, labels=task.labels, quantization=experiment.model.quantization,
                                  dtype=experiment.model.dtype)
    if method.kind == "lora":
        from peft import PeftModel

        adapted = PeftModel.from_pretrained(model, checkpoint)
    else:
        adapted = FlareModel.from_pretrained(model, checkpoint)
    mt_tokenizer = None
    if method.kind == "flare_mt":
        from transformers import AutoTokenizer

        mt_tokenizer = AutoTokenizer.from_pretrained(method.flare.mt_encoder)
    if torch.cuda.is_available() and experiment.model.quantization == "none":  # 4-bit models are placed at load
        adapted.to("cuda")
    encoder = TaskEncoder(task, tokenizer, family, training.max_length, source=NEEDS_SOURCE[method.kind], mt_tokenizer=mt_tokenizer)
    return {f"{role}/{k}": v for k, v in _score(task, encoder, adapted.eval(), records, training).items()}

"""Stage 1 of the paper's two-stage setup: fine-tune on English task data, merge, save.

A LoRA adapter (the experiment's ``method.lora``) is trained on the English
side of the task's training split (scored on the English validation side),
merged into the base weights (``merge_and_unload``) and saved with the
tokenizer (and, for encoders, the trained task head) as an ordinary checkpoint.
Every trial that names it (``model.stage1: <folder>``) starts from it; it is
also the zero-shot model of the paper.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import datasets
import ray.train
import torch
from peft import LoraConfig, get_peft_model

from flare_ray.experiment import ExperimentConfig
from flare_ray.fusion import default_task_type
from flare_ray.models.loading import infer_family, load_model
from flare_ray.tasks import Task, get_task
from flare_ray.tasks.encoding import TaskEncoder

from .loop import Engine, _score, optimizer_steps, train_loader

STAGE1_INFO = "stage1.json"


def english_side(task: Task, records: datasets.Dataset) -> datasets.Dataset:
    """The records with their English (source) side as the side the model reads."""
    columns = [f for f in task.text_fields] + ([] if task.labels else ["answers"])
    return records.map(lambda r: {f"target_{c}": r[f"source_{c}"] for c in columns})


def stage1_loop_per_worker(loop_config: dict[str, Any]) -> None:
    experiment = ExperimentConfig.model_validate(loop_config["experiment"])
    output = Path(loop_config["output"])
    training = experiment.training
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(training.seed)

    task = get_task(experiment.task.task_config(experiment.task.languages[0]))
    train = english_side(task, task.load("train"))
    validation = english_side(task, task.load("validation"))
    family = experiment.model.resolved_family() or infer_family(experiment.model.name_or_path)
    model, tokenizer = load_model(experiment.model.name_or_path, family, labels=task.labels, dtype=experiment.model.dtype)
    adapted = get_peft_model(model, LoraConfig(**experiment.method.lora.peft_kwargs(), task_type=default_task_type(model)))
    encoder = TaskEncoder(task, tokenizer, family, training.max_length, source=False)
    loader = train_loader(train, encoder, training, rank, world)
    trainable = [p for p in adapted.parameters() if p.requires_grad]
    engine = Engine(adapted, trainable, training, experiment.scaling, optimizer_steps(loader, training), quantized=False)
    scores: dict[str, float] = {}
    for epoch in range(1, training.epochs + 1):
        loss = engine.train_epoch(loader, training.grad_accumulation)
        scores = _score(task, encoder, adapted, validation, training)
        ray.train.report({"epoch": epoch, "train/loss": loss, **{f"english_validation/{k}": v for k, v in scores.items()}})
    if rank == 0:
        merged = adapted.merge_and_unload()
        output.mkdir(parents=True, exist_ok=True)
        merged.save_pretrained(output)
        tokenizer.save_pretrained(output)
        info = {
            "base_model": experiment.model.name_or_path, "task": task.name, "lora": experiment.method.lora.peft_kwargs(),
            "training": training.model_dump(), "english_validation": scores, "data": task.provenance(),
        }
        (output / STAGE1_INFO).write_text(json.dumps(info, indent=2, default=str))


def run_stage1(experiment: ExperimentConfig, output: Path) -> Path:
    """Train stage 1 as one Ray Train run (the experiment's scaling) and return the merged checkpoint."""
    from ray.train.torch import TorchTrainer

    output = output.expanduser().resolve()
    trainer = TorchTrainer(
        stage1_loop_per_worker,
        train_loop_config={"experiment": experiment.model_dump(mode="json"), "output": str(output)},
        scaling_config=ray.train.ScalingConfig(
            num_workers=experiment.scaling.num_workers, use_gpu=experiment.scaling.use_gpu,
            resources_per_worker=experiment.scaling.resources_per_worker(),
        ),
        run_config=ray.train.RunConfig(name=f"{experiment.name}-stage1", storage_path=str(Path(experiment.storage_path).resolve())),
    )
    trainer.fit()
    if not (output / STAGE1_INFO).is_file():
        raise RuntimeError(f"stage 1 finished but wrote no checkpoint to {output}")
    return output

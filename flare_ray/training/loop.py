"""One trial's training: the per-worker loop that Ray Train runs on every worker.

A trial trains one adapter for one (task, target language). Every epoch it
trains on the translate-train split, scores the MT-validation split (model
selection, as in the paper), and reports the metrics, with an adapter-only
checkpoint (safetensors) whenever the epoch is the best so far. After the last epoch it restores the best epoch's
adapter and scores the gold test split once. With several workers the model is
wrapped in DDP (or a DeepSpeed engine when the experiment names a DeepSpeed
config); every rank scores the same records and rank 0 reports and checkpoints.

The loop reads one plain dict, ``{"experiment": <ExperimentConfig as dict>,
"language": <code>}``, so it is the same on a laptop and on a cluster.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch.utils.data import DataLoader

from flare_ray.experiment import ExperimentConfig
from flare_ray.models.loading import infer_family, load_model
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder

from .adapter import NEEDS_SOURCE, build_adapter

TRIAL_CONFIG_NAME = "trial_config.json"


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    experiment = ExperimentConfig.model_validate(loop_config["experiment"])
    language: str = loop_config["language"]
    training, method = experiment.training, experiment.method
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.manual_seed(training.seed)

    task = get_task(experiment.task.task_config(language))
    splits = {role: task.load(role) for role in ("train", "validation", "test")}  # data errors before the model

    name = str(experiment.model.stage1 or experiment.model.name_or_path)
    family = experiment.model.resolved_family() or infer_family(name)
    model, tokenizer = load_model(
        name, family, labels=task.labels, quantization=experiment.model.quantization,
        dtype=experiment.model.dtype, gradient_checkpointing=training.gradient_checkpointing,
    )
    adapted = build_adapter(model, method)
    mt_tokenizer = None
    if method.kind == "flare_mt":
        from transformers import AutoTokenizer

        mt_tokenizer = AutoTokenizer.from_pretrained(method.flare.mt_encoder)
    encoder = TaskEncoder(
        task, tokenizer, family, training.max_length, source=NEEDS_SOURCE[method.kind], mt_tokenizer=mt_tokenizer
    )

    trainable = [p for p in adapted.parameters() if p.requires_grad]
    loader = train_loader(splits["train"], encoder, training, rank, world)
    engine = Engine(
        adapted, trainable, training, experiment.scaling, optimizer_steps(loader, training),
        quantized=experiment.model.quantization != "none",
    )

    metric = experiment.search.metric
    best: dict[str, Any] = {"score": None, "epoch": 0, "state": None}
    for epoch in range(1, training.epochs + 1):
        started = time.perf_counter()
        train_loss = engine.train_epoch(loader, training.grad_accumulation)
        metrics: dict[str, Any] = {"epoch": epoch, "train/loss": train_loss, "train/seconds": time.perf_counter() - started}
        # Every rank scores the same records (ZeRO-3 needs all ranks in each forward); rank 0 reports.
        scores = _score(task, encoder, engine.unwrapped, splits["validation"], training)
        scores["loss"] = _loss(encoder, engine.unwrapped, splits["validation"], training.eval_batch_size, engine.device)
        metrics.update({f"validation/{k}": v for k, v in scores.items()})
        checkpoint = None
        if best["score"] is None or _better(metrics[metric], best["score"], experiment.search.mode):
            best.update(score=metrics[metric], epoch=epoch, state=engine.adapter_state())
            if rank == 0:  # a checkpoint only when the epoch is the best so far: the latest one is the best one
                checkpoint = _checkpoint(engine.unwrapped, experiment, language, epoch)
        ray.train.report(metrics, checkpoint=checkpoint)

    engine.load_adapter_state(best["state"])
    scores = _score(task, encoder, engine.unwrapped, splits["test"], training)
    # The best epoch's score again (Optuna learns from the last result), then the gold test scores.
    final = {"epoch": training.epochs, "final": True, "best_epoch": best["epoch"], metric: best["score"]}
    final.update({f"test/{k}": v for k, v in scores.items()})
    ray.train.report(final)


def train_loader(records, encoder: TaskEncoder, training, rank: int, world: int) -> DataLoader:
    """This worker's shard of the training records, shuffled each epoch, encoded per batch."""
    shard = records.shuffle(seed=training.seed).shard(num_shards=world, index=rank)
    return DataLoader(
        list(shard), batch_size=training.batch_size, shuffle=True,
        collate_fn=lambda rows: encoder.train_batch(rows).inputs,
        generator=torch.Generator().manual_seed(training.seed + rank),
    )


def optimizer_steps(loader: DataLoader, training) -> int:
    """Optimizer steps of the whole run (the learning-rate schedule's length)."""
    return training.epochs * math.ceil(len(loader) / training.grad_accumulation)


def _better(score: float, best: float, mode: str) -> bool:
    return score > best if mode == "max" else score < best


def _score(task, encoder: TaskEncoder, model, records, training) -> dict[str, float]:
    model.eval()
    predictions = encoder.predict(
        model, list(records), batch_size=training.eval_batch_size, max_new_tokens=training.max_new_tokens
    )
    model.train()
    return task.score(predictions, records)


@torch.no_grad()
def _loss(encoder: TaskEncoder, model, records, batch_size: int, device) -> float:
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(records), batch_size):
        rows = [records[i] for i in range(start, min(start + batch_size, len(records)))]
        inputs = {k: v.to(device) for k, v in encoder.train_batch(rows).inputs.items()}
        total += model(**inputs).loss.item() * len(rows)
        count += len(rows)
    model.train()
    return total / max(count, 1)


def _checkpoint(model, experiment: ExperimentConfig, language: str, epoch: int) -> ray.train.Checkpoint:
    """The adapter only (peft + FLARE weights, safetensors) and the trial's config."""
    directory = Path(tempfile.mkdtemp(prefix=f"adapter-epoch{epoch}-"))
    model.save_pretrained(directory)
    (directory / TRIAL_CONFIG_NAME).write_text(
        json.dumps({"experiment": experiment.model_dump(mode="json"), "language": language, "epoch": epoch}, indent=2)
    )
    return ray.train.Checkpoint.from_directory(directory)


class Engine:
    """DDP (via Ray Train) or DeepSpeed behind one small interface."""

    def __init__(self, flare, trainable, training, scaling, total_steps: int, quantized: bool):
        from transformers import get_linear_schedule_with_warmup

        self.flare = flare
        self.trainable = trainable
        warmup = int(training.warmup_ratio * total_steps)
        if scaling.deepspeed is not None:
            import deepspeed

            config = _deepspeed_config(scaling.deepspeed, training)
            optimizer = torch.optim.AdamW(trainable, lr=training.learning_rate, weight_decay=training.weight_decay)
            scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
            self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=flare, optimizer=optimizer, lr_scheduler=scheduler, config=config
            )
            self.deepspeed = True
        else:
            self.model = ray.train.torch.prepare_model(flare, move_to_device=not quantized)
            self.optimizer = torch.optim.AdamW(trainable, lr=training.learning_rate, weight_decay=training.weight_decay)
            self.scheduler = get_linear_schedule_with_warmup(self.optimizer, warmup, total_steps)
            self.deepspeed = False
        self.device = next(p.device for p in trainable)

    @property
    def unwrapped(self):
        return self.flare

    def train_epoch(self, loader, accumulation: int) -> float:
        self.model.train()
        total, count = 0.0, 0
        for step, batch in enumerate(loader, start=1):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            loss = self.model(**batch).loss
            if self.deepspeed:
                self.model.backward(loss)
                self.model.step()
            else:
                (loss / accumulation).backward()
                if step % accumulation == 0 or step == len(loader):
                    self.optimizer.step()
                    self.scheduler.step()
                    self.optimizer.zero_grad(set_to_none=True)
            total += loss.item()
            count += 1
        return total / max(count, 1)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.flare.named_parameters() if v.requires_grad}

    def load_adapter_state(self, state: dict[str, torch.Tensor] | None) -> None:
        if state is None:
            return
        params = dict(self.flare.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v.to(params[k].device))


def _deepspeed_config(spec, training) -> dict[str, Any]:
    config = dict(spec) if isinstance(spec, dict) else json.loads(Path(spec).read_text())
    config.setdefault("train_micro_batch_size_per_gpu", training.batch_size)
    config.setdefault("gradient_accumulation_steps", training.grad_accumulation)
    config.setdefault("gradient_clipping", 1.0)
    return config

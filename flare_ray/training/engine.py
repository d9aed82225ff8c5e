"""The optimisation engine of a run: DDP (via Ray Train; none with one worker) or DeepSpeed behind one small interface.

AdamW on the trainable parameters, transformers' ``get_scheduler`` (``training.lr_scheduler``
with ``warmup_ratio`` of the optimizer steps as warm-up), gradient clipping at
``training.max_grad_norm`` and gradient accumulation, the same in both engines.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager

import torch


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite: the trial stops, errored, with this reason."""


class Engine:
    def __init__(self, model: torch.nn.Module, training, scaling, total_steps: int, quantized: bool):
        from transformers import get_scheduler

        self.flare = model
        self.training = training
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.trainable, lr=training.learning_rate, weight_decay=training.weight_decay)
        self.scheduler = get_scheduler(
            training.lr_scheduler, self.optimizer,
            num_warmup_steps=int(training.warmup_ratio * total_steps), num_training_steps=total_steps,
        )
        self.deepspeed = scaling.deepspeed is not None
        if self.deepspeed:
            import deepspeed

            self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model, optimizer=self.optimizer, lr_scheduler=self.scheduler,
                config=_deepspeed_config(scaling.deepspeed, training),
            )
        else:
            from .session import prepare_model

            self.model = prepare_model(model, move_to_device=not quantized)
        self.device = next(p.device for p in self.trainable)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.flare

    def train_epoch(
        self, loader, epoch: int, first_step: Callable[[], ContextManager] = contextlib.nullcontext
    ) -> float:
        """One pass over ``loader`` (reshuffled for ``epoch``); the mean training loss.
        ``first_step``: a context around the first step (the FLARE fusion check)."""
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        self.model.train()
        accumulation, clip = self.training.grad_accumulation, self.training.max_grad_norm
        total, count = 0.0, 0
        for step, batch in enumerate(loader, start=1):
            batch = {k: v.to(self.device) for k, v in batch.items()}
            with first_step() if step == 1 else contextlib.nullcontext():
                loss = self.model(**batch).loss
                if self.deepspeed:
                    self.model.backward(loss)
                else:
                    (loss / accumulation).backward()
            if self.deepspeed:
                self.model.step()
            elif step % accumulation == 0 or step == len(loader):
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(self.trainable, clip)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            value = loss.item()
            if not math.isfinite(value):  # stop at once: the rest of the trial would train on garbage
                raise NonFiniteLoss(f"the training loss became {value} at step {step} of epoch {epoch}")
            total += value
            count += 1
        return total / max(count, 1)

    @property
    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    def adapter_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().clone() for k, v in self.flare.named_parameters() if v.requires_grad}

    def load_adapter_state(self, state: dict[str, torch.Tensor] | None) -> None:
        if state is None:
            return
        params = dict(self.flare.named_parameters())
        with torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v.to(params[k].device))


def _deepspeed_config(spec: dict[str, Any], training) -> dict[str, Any]:
    """``scaling.deepspeed`` (read from its file when the YAML was loaded) with the training loop's settings."""
    config = dict(spec)
    config.setdefault("train_micro_batch_size_per_gpu", training.batch_size)
    config.setdefault("gradient_accumulation_steps", training.grad_accumulation)
    config.setdefault("gradient_clipping", training.max_grad_norm or 0.0)
    return config

"""The optimisation engine of a run: DDP (via Ray Train; none with one worker) or DeepSpeed behind one small interface.

AdamW on the trainable parameters (a torch optimizer in both engines, so DeepSpeed compiles no fused op),
transformers' ``get_scheduler`` (``training.lr_scheduler`` with ``warmup_ratio`` of the optimizer steps as
warm-up), gradient clipping at ``training.max_grad_norm``, gradient accumulation and mixed precision
(``training.precision``: ``torch.autocast``, a gradient scaler for fp16; DeepSpeed's own bf16/fp16 sections),
the same in both engines. Each epoch also measures its throughput (tokens/s, padding excluded), the padding
among the positions its batches made the model compute (target and source sides), the peak
memory (the GPU's, else the process's resident set) and where its time went (waiting for the loader's
batches, and the steps: :attr:`Engine.timing`) and its optimizer steps.
"""

from __future__ import annotations

import contextlib
import math
import resource
import sys
import time
from typing import Any, Callable, ContextManager, Iterable

import torch

from . import faults


class NonFiniteLoss(FloatingPointError):
    """The training loss became NaN or infinite: the trial stops, errored, with this reason."""


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# A trial's first result names the attention kernels its model runs (models.loading.attn_implementation); the
# MLflow callback tags it on the trial's run (flare_ray.tracking.callback.RESULT_TAGS).
ATTENTION_KEY = "model/attn_implementation"
# training.compile's torch.compile backend. A seam: the unit tests set "eager" (dynamo traces the same graphs and
# runs them as they are: seconds, where inductor's compilation takes minutes on a CPU).
COMPILE_BACKEND = "inductor"


def autocast(precision: str, device: torch.device) -> ContextManager:
    """``torch.autocast`` for ``training.precision`` on ``device`` (nothing for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AUTOCAST_DTYPES[precision])


def peak_memory_gb(device: torch.device) -> float:
    """The peak memory so far: allocated on the GPU, else this process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / (2**30 if sys.platform == "darwin" else 2**20)


def tokens(batch: dict[str, torch.Tensor]) -> int:
    """The tokens a batch feeds the model, padding excluded: every attention mask's ones (target and source),
    and every position of a side flattened without padding (``training.padding_free``: position ids, no mask)."""
    return int(sum(v.sum() for k, v in batch.items() if k.endswith("attention_mask"))) + _flattened(batch)


def positions(batch: dict[str, torch.Tensor]) -> int:
    """The positions a batch makes the model compute, padding included: every attention mask's size (target and
    source; a source row read back from the source cache is counted as computed all the same), and every
    position of a flattened side."""
    return int(sum(v.numel() for k, v in batch.items() if k.endswith("attention_mask"))) + _flattened(batch)


def _flattened(batch: dict[str, torch.Tensor]) -> int:
    """The positions of the sides a padding-free batch carries flattened: position ids without a mask."""
    flat = [k for k in batch if k.endswith("position_ids") and k.replace("position_ids", "attention_mask") not in batch]
    return sum(batch[k].numel() for k in flat)


def padding_fraction(batches: Iterable[dict[str, torch.Tensor]]) -> float:
    """Padding among the positions the batches make the model compute (0: no padding; 0 for no batches)."""
    seen = computed = 0
    for batch in batches:
        seen, computed = seen + tokens(batch), computed + positions(batch)
    return 1 - seen / computed if computed else 0.0


class Engine:
    def __init__(self, model: torch.nn.Module, training, scaling, total_steps: int, quantized: bool, rank: int = 0):
        from transformers import get_scheduler

        self.rank = rank
        self.flare = model
        self.training = training
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.trainable, lr=training.learning_rate, weight_decay=training.weight_decay
        )
        self.scheduler = get_scheduler(
            training.lr_scheduler,
            self.optimizer,
            num_warmup_steps=int(training.warmup_ratio * total_steps),
            num_training_steps=total_steps,
        )
        self.deepspeed = scaling.deepspeed is not None
        if self.deepspeed:
            import deepspeed

            self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model,
                optimizer=self.optimizer,
                lr_scheduler=self.scheduler,
                config=_deepspeed_config(scaling.deepspeed, training),
            )
        else:
            from .session import prepare_model

            self.model = prepare_model(model, move_to_device=not quantized)
            if training.compile:  # the training steps' forward, FLARE's hooks within; scoring runs the model as is
                self.model = torch.compile(self.model, backend=COMPILE_BACKEND)
        self.device = next(p.device for p in self.trainable)
        # fp16 needs loss scaling (bf16 has fp32's range); DeepSpeed scales its own.
        fp16 = training.precision == "fp16" and not self.deepspeed
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)  # disabled: every call passes through
        self.throughput: dict[str, float] = {}
        self.timing: dict[str, float] = {}  # the last epoch's seconds: waiting for batches, and the steps

    def autocast(self) -> ContextManager:
        """The forward passes' precision (training and scoring); DeepSpeed's engine casts itself."""
        return contextlib.nullcontext() if self.deepspeed else autocast(self.training.precision, self.device)

    @property
    def unwrapped(self) -> torch.nn.Module:
        return self.flare

    def train_epoch(
        self, loader, epoch: int, first_step: Callable[[], ContextManager] = contextlib.nullcontext
    ) -> float:
        """One pass over ``loader`` (reshuffled for ``epoch``); the mean training loss.
        ``first_step``: a context around the first step (the FLARE fusion check)."""
        began = time.perf_counter()
        if hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        self.model.train()
        accumulation, clip = self.training.grad_accumulation, self.training.max_grad_norm
        total, count, seen, computed, stepped = 0.0, 0, 0, 0, 0
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        started = mark = time.perf_counter()
        waited = 0.0  # for the loader's batches (collation), between the steps
        for step, batch in enumerate(loader, start=1):
            waited += time.perf_counter() - mark
            faults.step(epoch=epoch, step=step, rank=self.rank)
            seen += tokens(batch)  # counted on the host, before the batch moves to the device
            computed += positions(batch)
            batch = {k: v.to(self.device) for k, v in batch.items()}
            if "position_ids" in batch and "attention_mask" not in batch:  # flattened (padding_free): packed, so
                batch["use_cache"] = False  # no KV cache (transformers reads packed sequences only without one)
            with first_step() if step == 1 else contextlib.nullcontext():
                with self.autocast():
                    loss = faults.loss(self.model(**batch).loss, seed=self.training.seed, epoch=epoch, step=step)
                if self.deepspeed:
                    self.model.backward(loss)
                else:
                    self.scaler.scale(loss / accumulation).backward()
            if self.deepspeed:
                stepped += self.model.is_gradient_accumulation_boundary()  # (its boundaries span epochs)
                self.model.step()
            elif step % accumulation == 0 or step == len(loader):
                self._optimizer_step(clip)
                stepped += 1
            value = loss.item()
            if not math.isfinite(value):  # stop at once: the rest of the trial would train on garbage
                raise NonFiniteLoss(f"the training loss became {value} at step {step} of epoch {epoch}")
            total += value
            count += 1
            mark = time.perf_counter()
        waited += time.perf_counter() - mark  # the loader's end
        seconds = time.perf_counter() - started
        self.timing = {"data": waited, "train_steps": time.perf_counter() - began - waited}
        self.throughput = {
            "tokens_per_second": seen / seconds if seconds > 0 else 0.0,
            "peak_memory_gb": peak_memory_gb(self.device),
            "optimizer_steps": float(stepped),  # this epoch's (the cost estimate counts them before the sweep)
            "padding_fraction": 1 - seen / computed if computed else 0.0,  # of the positions computed
        }
        return total / max(count, 1)

    def _optimizer_step(self, clip: float | None) -> None:
        self.scaler.unscale_(self.optimizer)  # clip the true gradients
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(self.trainable, clip)
        self.scaler.step(self.optimizer)  # skipped where fp16 gradients overflowed
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    @property
    def learning_rate(self) -> float:
        return self.scheduler.get_last_lr()[0]

    @property
    def zero3(self) -> bool:
        """DeepSpeed ZeRO stage 3: every rank holds a shard of each parameter, the adapter's included."""
        return self.deepspeed and self.model.zero_optimization_partition_weights()

    def gathered(self, modifier_rank: int | None = None) -> ContextManager:
        """Within: the adapter's parameters whole on every rank (ZeRO-3's ``GatheredParameters``, a collective:
        every rank enters it); with ``modifier_rank``, what that rank writes is partitioned again on exit."""
        if not self.zero3:
            return contextlib.nullcontext()
        import deepspeed

        return deepspeed.zero.GatheredParameters(self.trainable, modifier_rank=modifier_rank)

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The trainable (adapter) parameters, whole and on the CPU; call it within :meth:`gathered` on every rank."""
        return {k: v.detach().cpu().clone() for k, v in self.flare.named_parameters() if v.requires_grad}

    def training_state(self) -> dict[str, Any]:
        """What continues training where it stopped: the optimizer's moments (not DeepSpeed's: its ZeRO
        partitions live on every rank), the schedule's position and the fp16 loss scale. The adapter is
        :meth:`adapter_state`."""
        return {
            "optimizer": None if self.deepspeed else self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
        }

    def load_training_state(self, state: dict[str, Any]) -> None:
        if state.get("optimizer") is not None and not self.deepspeed:
            self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler") is not None and self.scaler.is_enabled():
            self.scaler.load_state_dict(state["scaler"])

    def load_adapter_state(self, state: dict[str, torch.Tensor] | None) -> None:
        """Write an :meth:`adapter_state` back (every rank, with the same state)."""
        if state is None:
            return
        params = dict(self.flare.named_parameters())
        with self.gathered(modifier_rank=0), torch.no_grad():
            for k, v in state.items():
                params[k].copy_(v.to(params[k].device))


def _deepspeed_config(spec: dict[str, Any], training) -> dict[str, Any]:
    """``scaling.deepspeed`` (read from its file when the YAML was loaded) with the training loop's settings."""
    config = dict(spec)
    config.setdefault("train_micro_batch_size_per_gpu", training.batch_size)
    config.setdefault("gradient_accumulation_steps", training.grad_accumulation)
    config.setdefault("gradient_clipping", training.max_grad_norm or 0.0)
    if training.precision != "fp32":
        config.setdefault(training.precision, {"enabled": True})
    return config

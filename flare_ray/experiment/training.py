"""What a run is trained with and on: the methods, the LoRA adapter, the training loop, stage 1, the resources.

The experiment YAML's ``method.lora``, ``training``, ``stage1`` and ``scaling`` sections
(:class:`~flare_ray.experiment.ExperimentConfig` embeds them) and what each ``method.kind`` is
(:data:`METHODS`). The schema owns them: the trial recipe (:mod:`flare_ray.training`) imports them and the
whole :class:`~flare_ray.experiment.ExperimentConfig`, never the other way. It imports nothing of flare_ray
but the key-path error, and neither torch nor transformers (a config is checked without them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flare_ray.configfile import FieldError

# transformers' get_scheduler names (SchedulerType) that need no arguments of their own: the ones the YAML
# offers (reduce_lr_on_plateau, warmup_stable_decay, cosine_with_min_lr, cosine_warmup_with_min_lr and greedy
# need some). Written out so that a config is checked without importing transformers; a test compares them.
LR_SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)


# The methods of the paper; METHODS says what each one is (flare_ray.training.adapter builds their models).
MethodKind = Literal["zero_shot", "translate_test", "lora", "input_fusion", "xmixup", "flare", "flare_mt"]


@dataclass(frozen=True)
class Method:
    trains: bool  # False: the stage-1 model is only scored
    source: bool  # the batches carry the English side (source_input_ids)
    input_fusion: bool = False  # the model reads [x_S; x_T] as one input
    reads_english: bool = False  # validation and test are read on their English side (translate-test)
    sections: tuple[str, ...] = ("lora",)  # the method.* sections it reads (method.lora, method.flare, ...)


METHODS: dict[MethodKind, Method] = {
    "zero_shot": Method(trains=False, source=False, sections=()),
    "translate_test": Method(trains=False, source=False, reads_english=True, sections=()),
    "lora": Method(trains=True, source=False),
    "input_fusion": Method(trains=True, source=False, input_fusion=True),
    "xmixup": Method(trains=True, source=True, sections=("lora", "xmixup")),
    "flare": Method(trains=True, source=True, sections=("lora", "flare")),
    "flare_mt": Method(trains=True, source=False, sections=("lora", "flare")),
}
assert set(METHODS) == set(get_args(MethodKind))
_METHOD_SECTIONS = {"lora", "flare", "xmixup"}


def method_reads(kind: str, key: str) -> bool:
    """Whether a trial of method ``kind`` reads the config value at ``key`` (a dotted path): a LoRA trial
    reads no ``method.flare.*``, FLARE no ``method.flare.mt_encoder`` (FLARE-MT's), zero-shot no
    ``method.lora.*``. Grid cells that differ only in values their method does not read are one cell."""
    parts = key.split(".")
    if parts[0] != "method" or len(parts) < 2 or parts[1] not in _METHOD_SECTIONS:
        return True
    if key == "method.flare.mt_encoder":
        return kind == "flare_mt"
    return parts[1] in METHODS[kind].sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSpec(_Section):
    """The LoRA adapter (peft ``LoraConfig``)."""

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: float | None = Field(None, gt=0, description="lora_alpha; null: alpha_ratio * r")
    alpha_ratio: float | None = Field(
        None, gt=0, description="lora_alpha = alpha_ratio * r (default 2); not with alpha"
    )
    dropout: float = Field(0.05, ge=0, lt=1, description="lora_dropout")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="module names to adapt, 'all-linear', or null (peft's default: attention query and value)"
    )
    modules_to_save: list[str] | None = Field(
        None,
        description="modules trained whole beside the LoRA and saved with it (peft's modules_to_save), besides "
        "the task head; null: the authors' (decoders that generate: the LM head, and Llama's input embeddings; none "
        "for encoders and encoder-decoders); []: none",
    )

    @field_validator("target_modules", mode="before")
    @classmethod
    def _one_module(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) and value != "all-linear" else value

    @model_validator(mode="after")
    def _one_alpha(self) -> "LoraSpec":
        if self.alpha is not None and self.alpha_ratio is not None:
            raise FieldError("alpha_ratio", f"set alpha ({self.alpha}) or alpha_ratio ({self.alpha_ratio}), not both")
        return self

    @property
    def lora_alpha(self) -> int | float:
        """The effective lora_alpha: ``alpha``, else ``alpha_ratio * r`` (ratio 2 by default)."""
        alpha = self.alpha if self.alpha is not None else (self.alpha_ratio or 2.0) * self.r
        return int(alpha) if float(alpha).is_integer() else alpha

    def peft_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``peft.LoraConfig`` (add ``task_type``)."""
        kwargs: dict[str, Any] = {"r": self.r, "lora_alpha": self.lora_alpha, "lora_dropout": self.dropout}
        return kwargs | ({"target_modules": self.target_modules} if self.target_modules is not None else {})


class TrainingSpec(_Section):
    """The training loop of one trial."""

    epochs: int = Field(10, ge=1, description="training epochs (one reported result per epoch)")
    batch_size: int = Field(32, ge=1, description="per-device training batch size")
    eval_batch_size: int = Field(64, ge=1, description="per-device evaluation batch size")
    max_length: int = Field(128, ge=8, description="maximum tokens per sequence")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    lr_scheduler: str = Field(
        "linear",
        description="transformers' get_scheduler name: linear (warm-up, then linear "
        "decay to 0; the authors' and the HF Trainer's default), cosine, constant, ...",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="fraction of optimizer steps with linear warm-up")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="clip the gradient norm (HF Trainer's 1.0); null: no clipping"
    )
    seed: int = Field(42, description="seeds head initialisation, LoRA initialisation, data order and dropout")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (saves memory)")
    max_new_tokens: int = Field(
        32, ge=1, description="generation budget of generative (encoder-decoder, decoder) answers"
    )
    grad_accumulation: int = Field(1, ge=1, description="gradient accumulation steps")
    group_by_length: bool | int = Field(
        False,
        description="draw the training batches from rows of similar length, as the HF Trainer's group_by_length "
        "does (transformers' length-grouped sampler: a shuffled window of up to 50 batches, sorted by length, "
        "seeded by training.seed and the epoch): less padding, the same rows every epoch; a row's length is its "
        "tokens on the longest side the batch carries (target, source, MT input). true: the Trainer's window "
        "(min(rows // (4 batches), 50) batches: one batch, so no sorting, on NusaX's 500 rows at batch 64); an "
        "int: windows of that many batches (larger: less padding, a less random order). false: a plain shuffle",
    )

    padding_free: bool = Field(
        False,
        description="decoders' generative head: each training batch without padding, its sequences end to end in "
        "one row with position ids restarting per sequence (transformers' DataCollatorWithFlattening; packed "
        "attention: block-diagonal for sdpa and eager, varlen kernels for flash_attention_2); the source side too "
        "where no source cache reads it (source_cache_gb 0; with the cache its rows stay padded), FLARE-MT's MT "
        "input stays padded; FLARE aligns each sequence with its own source; not with cross_attention fusion or "
        "xmixup. Pays with flash_attention_2 (per-sequence kernels); with sdpa or eager the one row's mask makes "
        "attention quadratic in the whole batch's tokens. false: rows padded to the batch's longest",
    )
    compile: bool = Field(
        False,
        description="torch.compile the trial's model (its forward passes and FLARE's fusion hooks; the first "
        "steps pay for the compilation); off by default: benchmarks/paths.py measures what it gains",
    )
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32",
        description="autocast of training and scoring: fp32 (none), bf16 (torch.autocast; GPUs with bf16, "
        "or the CPU), fp16 (autocast with a gradient scaler); DeepSpeed gets the matching bf16/fp16 section",
    )
    source_cache_gb: float = Field(
        2.0,
        ge=0,
        description="FLARE and FLARE-MT: keep each source example's representations (half precision, "
        "where the source pass ran) after its first source pass, up to this many GB per trial process (shared "
        "by the trials Tune runs in it; the first trial of a model state also writes them to the sweep's storage "
        "for the other processes and nodes); past that, the rest is computed every step. 0: no cache (not under "
        "DeepSpeed ZeRO-3, whose passes are collective)",
    )

    @field_validator("lr_scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        if value not in LR_SCHEDULERS:
            raise ValueError(f"unknown learning-rate scheduler {value!r}; expected one of {list(LR_SCHEDULERS)}")
        return value

    @field_validator("group_by_length")
    @classmethod
    def _window(cls, value: bool | int) -> bool | int:
        if not isinstance(value, bool) and value < 1:
            raise ValueError(f"{value}: expected true, false or a window of at least 1 batch")
        return value


def padding_free_problem(family: str | None, head: str | None, kind: str, fusion: str) -> str | None:
    """What rules out ``training.padding_free`` for a model of ``family`` (None: not known yet) with ``head`` (None:
    the family's default) trained by method ``kind`` with FLARE's ``fusion``; None: nothing."""
    if family is not None and family != "decoder":
        return f"flattened batches are for decoders' generative head; the model is of family {family!r}"
    if head == "task":
        return "flattened batches are for decoders' generative head; model.head is 'task'"
    if kind == "xmixup":
        return "X-Mixup mixes padded rows of the two sides; use padded batches (false)"
    if kind in ("flare", "flare_mt") and fusion == "cross_attention":
        return "cross_attention fusion attends within a row, which would reach across flattened sequences"
    return None


class Stage1Spec(_Section):
    """Stage 1 (``model.stage1: auto``): a LoRA fine-tune on the English side of the task's training data,
    merged into the base model before every trial; trained once per fingerprint."""

    lora: LoraSpec | None = Field(None, description="the stage-1 LoRA; null: method.lora as written in the YAML")
    training: TrainingSpec | None = Field(None, description="stage-1 training; null: the training section")


class ScalingSpec(_Section):
    """Resources of one trial (Ray Train workers); fixed for the whole search."""

    num_workers: int = Field(1, ge=1, description="data-parallel workers per trial")
    use_gpu: bool = Field(False, description="give each worker GPUs")
    gpus_per_worker: float | None = Field(None, ge=0, description="null: 1 with use_gpu, else 0")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    deepspeed: dict[str, Any] | None = Field(
        None,
        description="null, a DeepSpeed JSON config (path, relative to the working directory), or the config inline",
    )
    ray_train: bool | None = Field(
        None,
        description="run each trial as a Ray Train run; null: only trials that need one (several workers or "
        "DeepSpeed), a single-worker trial runs in its Tune trial's own process (no Train controller, no worker "
        "actor; its resources are the worker's); true: always (e.g. for search.worker_max_failures)",
    )

    @property
    def in_trial_process(self) -> bool:
        """Whether a trial runs its recipe in its Tune trial's own process rather than as a Ray Train run."""
        return self.num_workers == 1 and self.deepspeed is None and not self.ray_train

    @field_validator("deepspeed", mode="before")
    @classmethod
    def _read(cls, value: Any) -> Any:
        """A path is read here, so trials (on other nodes, in other folders) get the config inline."""
        if not isinstance(value, (str, Path)):
            return value
        path = Path(value)
        try:
            return json.loads(path.read_text())
        except OSError:
            raise ValueError(f"DeepSpeed config {str(path)!r} not found (relative to {Path.cwd()})") from None
        except json.JSONDecodeError as err:
            raise ValueError(f"DeepSpeed config {str(path)!r} is not valid JSON: {err}") from None

    @model_validator(mode="after")
    def _gpus(self) -> "ScalingSpec":
        if self.gpus_per_worker and not self.use_gpu:
            raise FieldError("gpus_per_worker", f"{self.gpus_per_worker} GPUs per worker needs use_gpu: true")
        return self

    def resources_per_worker(self) -> dict[str, float]:
        """``{"CPU": ..., "GPU": ...}`` for Ray Train's ScalingConfig."""
        gpus = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if self.use_gpu else 0.0)
        return {"CPU": self.cpus_per_worker, "GPU": gpus}

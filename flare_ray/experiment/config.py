"""The experiment configuration: one YAML file describes one hyperparameter search.

Every section is a pydantic model that refuses unknown keys, and the sections
other parts own are their own types: ``method.flare`` *is*
:class:`flare_ray.fusion.FlareConfig`, ``task`` extends
:class:`flare_ray.tasks.TaskConfig` (languages and split recipes are checked by
the task class). Local paths are made absolute when the file is loaded; URIs
(``s3://``, ``gs://``, ``file://``) are kept as written. Read a file with
:func:`flare_ray.experiment.load_experiment`.

Defaults are ours unless a YAML says otherwise (the shipped ones follow the
paper's Table 5): LoRA r 8, alpha 2 r, dropout 0.05 on peft's default modules;
FLARE ``add_relu`` in all layers on query/value with ``next_block_output``
sources; 10 epochs, batch 32, 128 tokens, learning rate 2e-4 with linear decay
and 10 % warm-up, gradient clipping at 1.0, seed 42; TPE (seed 42), 8 trials,
the task's primary validation metric, maximised.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from flare_ray.fusion import FlareConfig
from flare_ray.models.tiny import FAMILIES as TINY_FAMILIES
from flare_ray.tasks import TASKS, TaskConfig, TaskDataError

from .distributions import Distribution, with_float_log

# get_scheduler names that need arguments of their own (not offered in the YAML)
_SCHEDULERS_NEEDING_ARGUMENTS = (
    "reduce_lr_on_plateau", "warmup_stable_decay", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "greedy",
)


class FieldError(ValueError):
    """A check across fields failed at ``path`` (relative to the model that raises it)."""

    def __init__(self, path: tuple[str | int, ...] | str, message: str) -> None:
        super().__init__(message)
        self.path, self.message = ((path,) if isinstance(path, str) else tuple(path)), message


def local_path(value: str) -> str:
    """A local path made absolute; a URI (``scheme://...``) as it is."""
    return value if "://" in value else str(Path(value).expanduser().resolve())


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Section):
    """The pretrained model that FLARE adapts."""

    name_or_path: str = Field(
        min_length=1, description="hub id (e.g. 'FacebookAI/xlm-roberta-large'), a local checkpoint, or "
        f"'tiny:<arch>' for the offline tiny models (arch in {list(TINY_FAMILIES)})",
    )
    family: Literal["encoder", "encoder_decoder", "decoder"] | None = Field(
        None, description="architecture family; null: inferred from the model"
    )
    quantization: Literal["none", "4bit"] = Field("none", description="'4bit': load with bitsandbytes NF4 (QLoRA)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the frozen base model")
    head: Literal["task", "generative"] | None = Field(
        None, description="'task': a classification or span head; 'generative': the LM head writes the answer; "
        "null: task heads for encoders and encoder-decoders, generative for decoders (the paper)",
    )
    stage1: Literal["auto"] | Path | None = Field(
        "auto", description="'auto': train the English stage-1 LoRA once per fingerprint, merge it and start every "
        "trial from it (the paper); a folder: a stage-1 adapter; null: single-stage (no English fine-tune)",
    )

    @field_validator("name_or_path")
    @classmethod
    def _tiny_or_local(cls, value: str) -> str:
        if value.startswith("tiny:") and value[5:] not in TINY_FAMILIES:
            raise ValueError(f"unknown tiny architecture {value[5:]!r}; expected tiny:<arch> with arch in {list(TINY_FAMILIES)}")
        return local_path(value) if Path(value).expanduser().exists() else value

    @field_validator("stage1")
    @classmethod
    def _absolute(cls, value: Any) -> Any:
        return Path(local_path(str(value))) if isinstance(value, Path) else value

    @model_validator(mode="after")
    def _family(self) -> "ModelSpec":
        tiny = TINY_FAMILIES.get(self.tiny_architecture or "")
        if self.family and tiny and self.family != tiny:
            raise FieldError("family", f"{self.name_or_path} is of family {tiny!r}; got {self.family!r}")
        return self

    @property
    def tiny_architecture(self) -> str | None:
        """``'llama'`` for ``tiny:llama``; None for real models."""
        return self.name_or_path[5:] if self.name_or_path.startswith("tiny:") else None


class TaskSpec(TaskConfig):
    """:class:`flare_ray.tasks.TaskConfig` with a list of target languages: one search per language."""

    language: str | None = Field(None, description="one target language (or list them in languages)")
    languages: list[str] = Field(default_factory=list, description="target language codes; one search per language")

    @model_validator(mode="after")
    def _check_with_task(self) -> "TaskSpec":
        if self.language is not None:
            if self.languages:
                raise FieldError("languages", "set language or languages, not both")
            self.languages, self.language = [self.language], None
        if not self.languages:
            raise FieldError("languages", "expected at least one target language")
        for i, lang in enumerate(self.languages):
            if lang in self.languages[:i]:
                raise FieldError(("languages", i), f"language {lang!r} is listed twice")
            try:
                TASKS[self.name](self.task_config(lang))  # the language and split recipes, checked by the task
            except TaskDataError as err:
                role = next((r for r in self.splits if f"splits.{r}" in str(err)), None)
                raise FieldError(("splits", role) if role else ("languages", i), str(err)) from None
        return self

    def task_config(self, language: str) -> TaskConfig:
        """The :class:`~flare_ray.tasks.TaskConfig` of one target language."""
        return TaskConfig(**self.model_dump(exclude={"language", "languages"}), language=language)


class LoraSpec(_Section):
    """The LoRA adapter (peft ``LoraConfig``)."""

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: float | None = Field(None, gt=0, description="lora_alpha; null: alpha_ratio * r")
    alpha_ratio: float | None = Field(None, gt=0, description="lora_alpha = alpha_ratio * r (default 2); not with alpha")
    dropout: float = Field(0.05, ge=0, lt=1, description="lora_dropout")
    target_modules: list[str] | Literal["all-linear"] | None = Field(
        None, description="module names to adapt, 'all-linear', or null (peft's default: attention query and value)"
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


class MethodSpec(_Section):
    """Which adapter: FLARE, FLARE-MT (latent translations of an MT encoder), or plain LoRA."""

    kind: Literal["flare", "flare_mt", "lora"] = Field("flare", description="flare | flare_mt | lora (the baseline)")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="the LoRA adapter")
    flare: FlareConfig = Field(default_factory=FlareConfig, description="FLARE's options (flare_ray.fusion.FlareConfig)")

    @model_validator(mode="after")
    def _consistent(self) -> "MethodSpec":
        mt = self.flare.mt_encoder
        if mt and mt.startswith("tiny:") and mt != "tiny:m2m_100":
            raise FieldError(("flare", "mt_encoder"), f"the tiny MT model is 'tiny:m2m_100' (NLLB architecture); got {mt!r}")
        if self.kind == "flare_mt" and not mt:
            raise FieldError(("flare", "mt_encoder"), "method.kind flare_mt needs an MT model here, e.g. "
                             "facebook/nllb-200-distilled-600M")
        targets, fusing = self.lora.target_modules, self.flare.fusion_modules
        if self.kind != "lora" and isinstance(targets, list) and fusing and set(fusing) - set(targets):
            raise FieldError(("flare", "fusion_modules"), f"{sorted(set(fusing) - set(targets))} are not adapted by "
                             f"LoRA; expected a subset of lora.target_modules {targets}")
        if self.kind != "lora" and self.flare.fusion == "cross_attention" and self.lora.r % self.flare.cross_attention_heads:
            raise FieldError(("flare", "cross_attention_heads"), f"cross_attention heads ({self.flare.cross_attention_heads})"
                             f" must divide the LoRA rank r ({self.lora.r})")
        return self

    def flare_config(self) -> FlareConfig | None:
        """The FlareConfig of this method (None for plain LoRA; mt_encoder only for flare_mt)."""
        if self.kind == "lora":
            return None
        return self.flare if self.kind == "flare_mt" else dataclasses.replace(self.flare, mt_encoder=None)


class TrainingSpec(_Section):
    """The training loop of one trial."""

    epochs: int = Field(10, ge=1, description="training epochs (one reported result per epoch)")
    batch_size: int = Field(32, ge=1, description="per-device training batch size")
    eval_batch_size: int = Field(64, ge=1, description="per-device evaluation batch size")
    max_length: int = Field(128, ge=8, description="maximum tokens per sequence")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    lr_scheduler: str = Field("linear", description="transformers' get_scheduler name: linear (warm-up, then linear "
                              "decay to 0; the authors' and the HF Trainer's default), cosine, constant, ...")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="fraction of optimizer steps with linear warm-up")
    max_grad_norm: float | None = Field(1.0, gt=0, description="clip the gradient norm (HF Trainer's 1.0); null: no clipping")
    seed: int = Field(42, description="seeds head initialisation, LoRA initialisation, data order and dropout")
    gradient_checkpointing: bool = Field(False, description="recompute activations in the backward pass (saves memory)")
    max_new_tokens: int = Field(32, ge=1, description="generation budget of generative (encoder-decoder, decoder) answers")
    grad_accumulation: int = Field(1, ge=1, description="gradient accumulation steps")

    @field_validator("lr_scheduler")
    @classmethod
    def _scheduler(cls, value: str) -> str:
        from transformers import SchedulerType

        names = [s.value for s in SchedulerType if s.value not in _SCHEDULERS_NEEDING_ARGUMENTS]
        if value not in names:
            raise ValueError(f"unknown learning-rate scheduler {value!r}; expected one of {names}")
        return value


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
        None, description="null, a DeepSpeed JSON config (path, relative to the working directory), or the config inline"
    )

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


class SamplerSpec(_Section):
    """Optuna's sampler."""

    type: Literal["tpe"] = Field("tpe", description="tpe: Optuna's TPESampler")
    seed: int | None = Field(42, description="sampler seed; null: random")
    n_startup_trials: int = Field(10, ge=0, description="random trials before TPE models the results")


class SchedulerSpec(_Section):
    """Ray Tune's ASHA early stopping (``max_t`` = training.epochs; one result per epoch)."""

    type: Literal["asha"] = Field("asha", description="asha: Ray Tune's ASHAScheduler")
    grace_period: int = Field(1, ge=1, description="epochs every trial runs before it may be stopped")
    reduction_factor: float = Field(4.0, gt=1, description="keep 1 / reduction_factor of the trials at each rung")


class SearchSpec(_Section):
    """The search: space, sampler, scheduler, budget and objective."""

    space: dict[str, Distribution] = Field(
        default_factory=dict, description="dotted key path -> distribution (see flare_ray.experiment.space)"
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description="Optuna sampler")
    scheduler: SchedulerSpec | None = Field(None, description="null: every trial runs all epochs")
    num_samples: int = Field(8, ge=1, description="trials per target language")
    max_concurrent_trials: int | None = Field(None, ge=1, description="null: as many as resources allow")
    metric: str | None = Field(None, description="'validation/<metric>'; null: the task's primary metric")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    max_failures: int = Field(0, ge=-1, description="retries of a failed trial (-1: unlimited)")
    worker_max_failures: int = Field(0, ge=-1, description="Ray Train worker-group restarts within a trial")

    @field_validator("space", mode="before")
    @classmethod
    def _loguniform(cls, space: Any) -> Any:
        return with_float_log(space)


class TrackingSpec(_Section):
    """MLflow tracking."""

    tracking_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///<storage_path>/mlflow.db")
    experiment_name: str | None = Field(None, description="MLflow experiment; null: the sweep name")


class ExperimentConfig(_Section):
    """One hyperparameter search (per target language) of one method on one task and model."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="sweep name: MLflow experiment and parent "
                      "run, Tune run name (letters, digits, _ . -)")
    model: ModelSpec = Field(description="the pretrained model")
    task: TaskSpec = Field(description="the task and its target languages")
    method: MethodSpec = Field(default_factory=MethodSpec, description="FLARE, FLARE-MT or LoRA, and their options")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="the training loop of a trial")
    stage1: Stage1Spec = Field(default_factory=Stage1Spec, description="stage 1 (used with model.stage1: auto)")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="resources of a trial")
    search: SearchSpec = Field(default_factory=SearchSpec, description="the search space and how it is searched")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="MLflow tracking")
    storage_path: str = Field("outputs", min_length=1, description="Ray Tune storage (trial folders, checkpoints): "
                              "a local folder or a URI (file://, s3://, gs://)")

    validations: ClassVar[int] = 0  # experiments validated in this process (tests count them per trial)
    _source: str | None = PrivateAttr(None)  # the YAML file, set by load_experiment

    @field_validator("storage_path")
    @classmethod
    def _local_absolute(cls, value: str) -> str:
        return local_path(value)

    @model_validator(mode="after")
    def _across_sections(self) -> "ExperimentConfig":
        type(self).validations += 1
        metrics = (*TASKS[self.task.name].metrics(), "loss")  # loss: of the validation split, a smooth curve
        if self.search.metric is None:
            self.search.metric = f"validation/{TASKS[self.task.name].primary_metric}"
        split, _, metric = self.search.metric.partition("/")
        if split != "validation" or metric not in metrics:
            raise FieldError(("search", "metric"), f"task {self.task.name} reports no {self.search.metric!r}; "
                             f"expected one of {[f'validation/{m}' for m in metrics]}")
        scheduler = self.search.scheduler
        if scheduler and scheduler.grace_period > self.training.epochs:
            raise FieldError(("search", "scheduler", "grace_period"), f"grace period {scheduler.grace_period} is "
                             f"longer than training.epochs ({self.training.epochs})")
        if self.tracking.experiment_name is None:
            self.tracking.experiment_name = self.name
        return self

    @property
    def source(self) -> str | None:
        """The YAML file this config was loaded from (None if built in code)."""
        return self._source

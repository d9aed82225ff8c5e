"""The experiment configuration: one YAML file describes one hyperparameter search.

Every section is a pydantic model that refuses unknown keys. Values that other
parts of the project own are checked by them: fusion options by constructing
:class:`flare_ray.fusion.FlareConfig`, languages and split recipes by the task
class of :data:`flare_ray.tasks.TASKS`. Read a file with
:func:`flare_ray.experiment.load_experiment`, which also checks the search space
against this schema before any trial runs.

Defaults (ours unless marked; pick per task in the YAML):

* LoRA ``r=8``, ``alpha = 2 r`` (the authors' code defaults to r 8, alpha 16),
  dropout 0.05, peft's default target modules (attention query and value).
* FLARE: ``add_relu`` fusion in all layers on the query/value projections with
  ``next_block_output`` source representations (the paper's).
* Training: 10 epochs, batch size 32 (64 for evaluation), 128 tokens, learning
  rate 2e-4, weight decay 0, 10 % warm-up, seed 42.
* Search: TPE (seed 42), no scheduler, 8 trials, metric = the task's primary
  metric on the validation split (``validation/macro_f1`` for NusaX,
  ``validation/accuracy`` for XNLI, ``validation/exact_match`` for TyDiQA), max.
  The validation split is the task's offline default unless ``task.splits``
  says ``validation: mt`` (the paper selects on machine-translated validation
  data; that needs ``task.mt_dir``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, create_model, field_validator, model_validator

from .distributions import Distribution
from .errors import FieldError

TINY_ARCHITECTURES = ("xlm-roberta", "mt5", "llama", "gemma2")
TINY_FAMILIES = {"xlm-roberta": "encoder", "mt5": "encoder_decoder", "llama": "decoder", "gemma2": "decoder"}
Family = Literal["encoder", "encoder_decoder", "decoder"]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- model ---------------------------------------------------------------------------------------
class ModelSpec(_Section):
    """The pretrained model that FLARE adapts."""

    name_or_path: str = Field(
        min_length=1,
        description="hub id (e.g. 'FacebookAI/xlm-roberta-large'), a local checkpoint, or 'tiny:<arch>' "
        f"for the offline tiny models of flare_ray.models.tiny (arch in {list(TINY_ARCHITECTURES)})",
    )
    family: Family | None = Field(None, description="architecture family; null: inferred from the model")
    quantization: Literal["none", "4bit"] = Field("none", description="'4bit': load with bitsandbytes NF4 (QLoRA)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the frozen base model")
    head: Literal["task", "generative"] | None = Field(
        None,
        description="'task': a classification or span head; 'generative': the LM head writes the answer; "
        "null: task heads for encoders and encoder-decoders, generative for decoders (the paper)",
    )
    stage1: Literal["auto"] | Path | None = Field(
        "auto",
        description="'auto': train the English stage-1 LoRA once per fingerprint, merge it and start every trial "
        "from it (the paper); a folder: a merged stage-1 checkpoint; null: single-stage (no English fine-tune)",
    )

    @field_validator("name_or_path")
    @classmethod
    def _tiny(cls, value: str) -> str:
        if value.startswith("tiny:") and value[5:] not in TINY_ARCHITECTURES:
            raise ValueError(
                f"unknown tiny architecture {value[5:]!r}; expected tiny:<arch> with arch in {list(TINY_ARCHITECTURES)}"
            )
        return value

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

    def resolved_family(self) -> Family | None:
        """``family`` if set, else the family of a tiny model; None: infer from the loaded model."""
        return self.family or TINY_FAMILIES.get(self.tiny_architecture or "")


# -- task ----------------------------------------------------------------------------------------
def _task_fields() -> dict[str, Any]:
    """:class:`flare_ray.tasks.TaskConfig`'s fields except ``language`` (kept in step with it)."""
    from flare_ray.tasks import TaskConfig

    return {k: (f.annotation, f) for k, f in TaskConfig.model_fields.items() if k != "language"}


_TaskFields = create_model("_TaskFields", __config__=ConfigDict(extra="forbid"), **_task_fields())


class TaskSpec(_TaskFields):
    """:class:`flare_ray.tasks.TaskConfig` with a list of target languages: one search per language."""

    languages: list[str] = Field(min_length=1, description="target language codes; one search per language")

    @model_validator(mode="after")
    def _check_with_task(self) -> "TaskSpec":
        from flare_ray.tasks import TASKS, TaskDataError

        task = TASKS[self.name]
        for i, lang in enumerate(self.languages):
            if lang not in task.languages:
                raise FieldError(
                    ("languages", i),
                    f"task {self.name} has no language {lang!r}; expected one of {sorted(task.languages)}",
                )
            if lang in self.languages[:i]:
                raise FieldError(("languages", i), f"language {lang!r} is listed twice")
        for i, lang in enumerate(self.languages):
            try:
                task(self.task_config(lang))
            except TaskDataError as err:  # split recipes (and mt_dir) are checked by the task itself
                role = next((r for r in self.splits if f"splits.{r}" in str(err)), None)
                raise FieldError(("splits", role) if role else ("languages", i), str(err)) from None
        return self

    def task_config(self, language: str):
        """The :class:`flare_ray.tasks.TaskConfig` of one target language."""
        from flare_ray.tasks import TaskConfig

        return TaskConfig(**self.model_dump(exclude={"languages"}), language=language)


def reported_metrics(task_name: str) -> tuple[str, ...]:
    """The metric names the task's ``score`` reports (the training loop logs them as ``<split>/<name>``)."""
    from flare_ray.tasks import TASKS

    scores = ("accuracy", "macro_f1", "invalid") if TASKS[task_name].labels else ("exact_match", "f1")
    return (*scores, "loss")  # the loss of the validation split, a smooth curve for early stopping


# -- method --------------------------------------------------------------------------------------
class LoraSpec(_Section):
    """The LoRA adapter (peft ``LoraConfig``)."""

    r: int = Field(8, ge=1, description="LoRA rank")
    alpha: float | None = Field(None, gt=0, description="lora_alpha; null: alpha_ratio * r")
    alpha_ratio: float | None = Field(None, gt=0, description="lora_alpha = alpha_ratio * r (default 2); not with alpha")
    dropout: float = Field(0.05, ge=0, lt=1, description="lora_dropout")
    target_modules: Any = Field(
        None, description="module names to adapt, 'all-linear', or null (peft's default: attention query and value)"
    )

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, value: Any) -> list[str] | str | None:
        if value is None or value == "all-linear":
            return value
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return value
        raise ValueError(f"expected a list of module names, 'all-linear' or null; got {value!r}")

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
        if self.target_modules is not None:
            kwargs["target_modules"] = self.target_modules
        return kwargs


class FlareSpec(_Section):
    """Where and how FLARE fuses (:class:`flare_ray.fusion.FlareConfig`, which checks every value)."""

    fusion: str = Field("add_relu", description="a registered fusion function: add, mul, add_relu, cross_attention")
    fusion_modules: list[str] | None = Field(None, description="adapted modules that fuse; null: query and value")
    fusion_layers: Any = Field("all", description="'all', 'lower_half', 'upper_half', block indices, ranges like '0-5'")
    source_representation: str = Field(
        "next_block_output", description="next_block_output (the paper), module_input or block_input"
    )
    cross_attention_heads: int = Field(1, description="heads of the cross_attention fusion (must divide r)")
    cross_attention_query: str = Field(
        "source", description="cross_attention: which side queries, 'source' (the paper, Sec. 3.2) or 'target'"
    )
    unaligned: str = Field(
        "fuse_zero",
        description="target positions with no aligned source token: 'fuse_zero' (f(0, a_t), the padded "
        "formulation) or 'lora' (a_t, plain LoRA)",
    )
    mt_encoder: str | None = Field(None, description="MT model whose encoder supplies the source (method.kind flare_mt)")

    @model_validator(mode="after")
    def _check_with_flare(self) -> "FlareSpec":
        if self.mt_encoder and self.mt_encoder.startswith("tiny:") and self.mt_encoder != "tiny:m2m_100":
            raise FieldError(
                "mt_encoder", f"the tiny MT model is 'tiny:m2m_100' (NLLB architecture); got {self.mt_encoder!r}"
            )
        self.to_flare_config()  # FlareConfig's own checks, errors mapped to the key
        return self

    def to_flare_config(self, use_mt_encoder: bool = True):
        """The :class:`flare_ray.fusion.FlareConfig` (without ``mt_encoder`` unless ``use_mt_encoder``)."""
        from flare_ray.fusion import FlareConfig

        kwargs = self.model_dump()
        if not use_mt_encoder:
            kwargs["mt_encoder"] = None
        try:
            return FlareConfig(**kwargs)
        except (ValueError, TypeError) as err:
            message = str(err)
            for key in kwargs:
                if message.startswith(f"FlareConfig.{key}:"):
                    raise FieldError(key, message.split(":", 1)[1].strip()) from None
            raise FieldError((), message) from None


class MethodSpec(_Section):
    """Which adapter: FLARE, FLARE-MT (latent translations of an MT encoder), or plain LoRA."""

    kind: Literal["flare", "flare_mt", "lora"] = Field("flare", description="flare | flare_mt | lora (the baseline)")
    lora: LoraSpec = Field(default_factory=LoraSpec, description="the LoRA adapter")
    flare: FlareSpec = Field(default_factory=FlareSpec, description="used by kind flare and flare_mt")

    @model_validator(mode="after")
    def _consistent(self) -> "MethodSpec":
        if self.kind == "flare_mt" and not self.flare.mt_encoder:
            raise FieldError(
                ("flare", "mt_encoder"), "method.kind flare_mt needs an MT model here, e.g. facebook/nllb-200-distilled-600M"
            )
        if self.kind == "lora":
            return self
        targets = self.lora.target_modules
        if isinstance(targets, list) and self.flare.fusion_modules:
            outside = [m for m in self.flare.fusion_modules if m not in targets]
            if outside:
                raise FieldError(
                    ("flare", "fusion_modules"),
                    f"{outside} are not adapted by LoRA; expected a subset of lora.target_modules {targets}",
                )
        if self.flare.fusion == "cross_attention" and self.lora.r % self.flare.cross_attention_heads:
            raise FieldError(
                ("flare", "cross_attention_heads"),
                f"cross_attention heads ({self.flare.cross_attention_heads}) must divide the LoRA rank r ({self.lora.r})",
            )
        return self

    def flare_config(self):
        """The FlareConfig of this method (None for plain LoRA; mt_encoder only for flare_mt)."""
        return None if self.kind == "lora" else self.flare.to_flare_config(use_mt_encoder=self.kind == "flare_mt")


# -- training and resources ----------------------------------------------------------------------
class TrainingSpec(_Section):
    """The training loop of one trial."""

    epochs: int = Field(10, ge=1, description="training epochs (one reported result per epoch)")
    batch_size: int = Field(32, ge=1, description="per-device training batch size")
    eval_batch_size: int = Field(64, ge=1, description="per-device evaluation batch size")
    max_length: int = Field(128, ge=8, description="maximum tokens per sequence")
    learning_rate: float = Field(2e-4, gt=0, description="peak learning rate (AdamW)")
    lr_scheduler: str = Field(
        "linear",
        description="transformers' get_scheduler name: linear (warm-up, then linear decay to 0; the authors' "
        "and the HF Trainer's default), cosine, constant, constant_with_warmup, ...",
    )
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="fraction of optimizer steps with linear warm-up")
    max_grad_norm: float | None = Field(
        1.0, gt=0, description="clip the gradient norm (the HF Trainer's default 1.0); null: no clipping"
    )
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


# get_scheduler names that need arguments of their own (not offered in the YAML)
_SCHEDULERS_NEEDING_ARGUMENTS = (
    "reduce_lr_on_plateau", "warmup_stable_decay", "cosine_with_min_lr", "cosine_warmup_with_min_lr", "greedy",
)


class Stage1Spec(_Section):
    """Stage 1 of the paper (``model.stage1: auto``): a LoRA fine-tune on the English side of the task's
    training data, merged into the base model before every trial. Trained once per fingerprint."""

    lora: LoraSpec | None = Field(None, description="the stage-1 LoRA; null: method.lora as written in the YAML")
    training: TrainingSpec | None = Field(None, description="stage-1 training; null: the training section")


class ScalingSpec(_Section):
    """Resources of one trial (Ray Train workers); fixed for the whole search."""

    num_workers: int = Field(1, ge=1, description="data-parallel workers per trial")
    use_gpu: bool = Field(False, description="give each worker GPUs")
    gpus_per_worker: float | None = Field(None, ge=0, description="null: 1 with use_gpu, else 0")
    cpus_per_worker: float = Field(1.0, gt=0, description="CPUs reserved per worker")
    deepspeed: Any = Field(
        None, description="null, a DeepSpeed JSON config (path, relative to the working directory), or the config inline"
    )

    @field_validator("deepspeed")
    @classmethod
    def _deepspeed(cls, value: Any) -> dict[str, Any] | None:
        """A path is read here, so trials (on other nodes, in other folders) get the config inline."""
        if value is None or isinstance(value, dict):
            return value
        if not isinstance(value, (str, Path)):
            raise ValueError(f"expected null, a path to a DeepSpeed JSON file, or a mapping; got {value!r}")
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"DeepSpeed config {str(path)!r} not found (relative to {os.getcwd()})")
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"DeepSpeed config {str(path)!r} is not valid JSON: {err}") from None
        if not isinstance(config, dict):
            raise ValueError(f"DeepSpeed config {str(path)!r} is not a JSON object")
        return config

    @model_validator(mode="after")
    def _gpus(self) -> "ScalingSpec":
        if self.gpus_per_worker and not self.use_gpu:
            raise FieldError("gpus_per_worker", f"{self.gpus_per_worker} GPUs per worker needs use_gpu: true")
        return self

    def resources_per_worker(self) -> dict[str, float]:
        """``{"CPU": ..., "GPU": ...}`` for Ray Train's ScalingConfig."""
        gpus = self.gpus_per_worker if self.gpus_per_worker is not None else (1.0 if self.use_gpu else 0.0)
        return {"CPU": self.cpus_per_worker, "GPU": gpus}


# -- search and tracking -------------------------------------------------------------------------
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
        default_factory=dict, description="dotted key path -> distribution (see flare_ray.experiment.distributions)"
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description="Optuna sampler")
    scheduler: SchedulerSpec | None = Field(None, description="null: every trial runs all epochs")
    num_samples: int = Field(8, ge=1, description="trials per target language")
    max_concurrent_trials: int | None = Field(None, ge=1, description="null: as many as resources allow")
    metric: str | None = Field(None, description="'validation/<metric>'; null: the task's primary metric")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    max_failures: int = Field(0, ge=-1, description="retries of a failed trial (-1: unlimited)")
    worker_max_failures: int = Field(0, ge=-1, description="Ray Train worker-group restarts within a trial")


class TrackingSpec(_Section):
    """MLflow tracking."""

    tracking_uri: str | None = Field(
        None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///<storage_path>/mlflow.db"
    )
    experiment_name: str | None = Field(None, description="MLflow experiment; null: the sweep name")


class ExperimentConfig(_Section):
    """One hyperparameter search (per target language) of one method on one task and model."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="sweep name: MLflow experiment and parent run, Tune run name (letters, digits, _ . -)",
    )
    model: ModelSpec = Field(description="the pretrained model")
    task: TaskSpec = Field(description="the task and its target languages")
    method: MethodSpec = Field(default_factory=MethodSpec, description="FLARE, FLARE-MT or LoRA, and their options")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="the training loop of a trial")
    stage1: Stage1Spec = Field(default_factory=Stage1Spec, description="stage 1 (used with model.stage1: auto)")
    scaling: ScalingSpec = Field(default_factory=ScalingSpec, description="resources of a trial")
    search: SearchSpec = Field(default_factory=SearchSpec, description="the search space and how it is searched")
    tracking: TrackingSpec = Field(default_factory=TrackingSpec, description="MLflow tracking")
    storage_path: str = Field("outputs", min_length=1, description="Ray Tune storage (trial folders, checkpoints)")

    _source: str | None = PrivateAttr(None)  # the YAML file, set by load_experiment

    @model_validator(mode="after")
    def _across_sections(self) -> "ExperimentConfig":
        metrics = reported_metrics(self.task.name)
        if self.search.metric is None:
            from flare_ray.tasks import TASKS

            self.search.metric = f"validation/{TASKS[self.task.name].primary_metric}"
        split, _, metric = self.search.metric.partition("/")
        if split != "validation" or metric not in metrics:
            raise FieldError(
                ("search", "metric"),
                f"task {self.task.name} reports no {self.search.metric!r}; expected one of "
                f"{[f'validation/{m}' for m in metrics]}",
            )
        if self.search.scheduler and self.search.scheduler.grace_period > self.training.epochs:
            raise FieldError(
                ("search", "scheduler", "grace_period"),
                f"grace period {self.search.scheduler.grace_period} is longer than training.epochs ({self.training.epochs})",
            )
        if self.tracking.experiment_name is None:
            self.tracking.experiment_name = self.name
        return self

    @property
    def source(self) -> str | None:
        """The YAML file this config was loaded from (None if built in code)."""
        return self._source


def resolve_tracking_uri(config: ExperimentConfig, environ: dict[str, str] | None = None) -> str:
    """The MLflow tracking URI: ``$MLFLOW_TRACKING_URI`` if set, else ``tracking.tracking_uri``,
    else ``sqlite:///<absolute storage_path>/mlflow.db``."""
    env = os.environ if environ is None else environ
    if env.get("MLFLOW_TRACKING_URI"):
        return env["MLFLOW_TRACKING_URI"]
    if config.tracking.tracking_uri:
        return config.tracking.tracking_uri
    if "://" in config.storage_path:
        raise ValueError(
            f"storage_path {config.storage_path!r} is remote: set tracking.tracking_uri or MLFLOW_TRACKING_URI"
        )
    return f"sqlite:///{(Path(config.storage_path).expanduser().resolve() / 'mlflow.db').as_posix()}"

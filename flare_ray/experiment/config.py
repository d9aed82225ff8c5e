"""The experiment configuration: one YAML file describes one hyperparameter search.

Every section refuses unknown keys, and the sections other packages own are their
own types: ``method.flare`` *is* :class:`flare_ray.fusion.FlareConfig`, ``task``
extends :class:`flare_ray.tasks.TaskConfig`, ``training``/``scaling``/``stage1``
come from :mod:`flare_ray.experiment.training`. Local paths are made absolute here,
once; URIs (``s3://``, ``gs://``, ``file://``) are kept as written.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, PrivateAttr, Tag, field_validator, model_validator

from flare_ray.baselines import XMixupConfig
from flare_ray.configfile import FieldError, get_path
from flare_ray.fusion import FlareConfig
from flare_ray.models.tiny import FAMILIES as TINY_FAMILIES
from flare_ray.storage import is_remote, local_folder, local_path, storage_problem
from flare_ray.tasks import TASKS, TaskConfig, TaskDataError
from flare_ray.tracking.config import TrackingSpec
from flare_ray.translate.config import TranslationSpec

from .distributions import Distribution, with_float_log
from .training import METHODS, LoraSpec, MethodKind, ScalingSpec, Stage1Spec, TrainingSpec, padding_free_problem

# The version of this schema, tagged on every MLflow run (flare_ray.schema_version): 1 before methods,
# grids and seeds (issue 10), 2 since. Tools that read sweeps (the report) check it.
SCHEMA_VERSION = 2


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSpec(_Section):
    """The pretrained model that FLARE adapts."""

    name_or_path: str = Field(
        min_length=1,
        description="hub id (e.g. 'FacebookAI/xlm-roberta-large'), a local "
        f"checkpoint, or 'tiny:<arch>', an offline tiny model (arch in {list(TINY_FAMILIES)})",
    )
    family: Literal["encoder", "encoder_decoder", "decoder"] | None = Field(None, description="null: from the model")
    quantization: Literal["none", "4bit"] = Field("none", description="'4bit': load with bitsandbytes NF4 (QLoRA)")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="dtype of the frozen base model")
    head: Literal["task", "generative"] | None = Field(
        None,
        description="'task': a classification or span head; 'generative': the LM head writes the answer; "
        "null: task heads for encoders and encoder-decoders, generative for decoders (the paper)",
    )
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2"] | None = Field(
        None,
        description="the attention kernels of the base model (transformers' attn_implementation): 'eager' "
        "(plain matmuls), 'sdpa' (torch's scaled_dot_product_attention), 'flash_attention_2' (needs the "
        "flash_attn package and a GPU, bf16/fp16); null: transformers' choice (sdpa where the model supports "
        "it); the one a trial ran is tagged on its run (flare_ray.attn_implementation)",
    )
    stage1: Literal["auto"] | Path | str | None = Field(
        "auto",
        description="'auto': train the English stage-1 LoRA once per fingerprint, merge it and start every "
        "trial from it (the paper); a folder or a URI (s3://...): a stage-1 adapter; null: single-stage (no "
        "English fine-tune)",
    )

    @field_validator("name_or_path")
    @classmethod
    def _tiny_or_local(cls, value: str) -> str:
        if value.startswith("tiny:") and value[5:] not in TINY_FAMILIES:
            raise ValueError(
                f"unknown tiny architecture {value[5:]!r}; expected tiny:<arch> with arch in {list(TINY_FAMILIES)}"
            )
        return local_path(value) if Path(value).expanduser().exists() else value

    @field_validator("stage1", mode="before")
    @classmethod
    def _absolute(cls, value: Any) -> Any:
        """A local folder (or ``file://`` URI) as an absolute Path; a remote URI as written."""
        if value in (None, "auto") or not isinstance(value, (str, Path)):
            return value
        if is_remote(str(value)):
            return str(value)
        return Path(local_path(str(local_folder(str(value)))))

    @model_validator(mode="after")
    def _family(self) -> "ModelSpec":
        tiny = TINY_FAMILIES.get(self.tiny_architecture or "")
        if self.family and tiny and self.family != tiny:
            raise FieldError("family", f"{self.name_or_path} is of family {tiny!r}; got {self.family!r}")
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise FieldError(
                "attn_implementation",
                "'flash_attention_2' needs the flash_attn package, which is not installed here "
                "(pip install flash-attn, on a CUDA machine); use 'sdpa' or null",
            )
        return self

    @property
    def tiny_architecture(self) -> str | None:
        """``'llama'`` for ``tiny:llama``; None for real models."""
        return self.name_or_path[5:] if self.name_or_path.startswith("tiny:") else None


MADE_BY_THE_SWEEP = Path("/made-by-the-sweep")  # a stand-in mt_dir while the task section is checked alone
MT_FOLDER = "mt"  # the sweep's translations: <storage_path>/mt/<task>/<language>/<role>.parquet


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
            try:  # the language and split recipes, checked by the task (where the sweep will translate: a stand-in mt_dir)
                made_here = self.needs_mt and self.mt_dir is None
                TASKS[self.name](
                    self.task_config(lang).model_copy(update={"mt_dir": MADE_BY_THE_SWEEP} if made_here else {})
                )
            except TaskDataError as err:
                role = next((r for r in self.splits if f"splits.{r}" in str(err)), None)
                raise FieldError(("splits", role) if role else ("languages", i), str(err)) from None
        return self

    @property
    def needs_mt(self) -> bool:
        """Does a split read machine translations (``splits.<role>: mt``)?"""
        return "mt" in self.splits.values()

    def task_config(self, language: str) -> TaskConfig:
        """The :class:`~flare_ray.tasks.TaskConfig` of one target language."""
        return TaskConfig(**self.model_dump(exclude={"language", "languages"}), language=language)


class MethodSpec(_Section):
    """Which method of the paper (:mod:`flare_ray.training.adapter`): FLARE, FLARE-MT or a baseline."""

    kind: MethodKind = Field(
        "flare",
        description=f"one of {list(METHODS)}: flare, flare_mt (the method); zero_shot, "
        "translate_test (the stage-1 model, scored only), lora, input_fusion, xmixup (baselines)",
    )
    lora: LoraSpec = Field(default_factory=LoraSpec, description="the LoRA adapter (every method that trains)")
    flare: FlareConfig = Field(
        default_factory=FlareConfig, description="FLARE's options (flare_ray.fusion.FlareConfig)"
    )
    xmixup: XMixupConfig = Field(default_factory=XMixupConfig, description="X-Mixup's options (kind xmixup)")

    @model_validator(mode="after")
    def _consistent(self) -> "MethodSpec":
        if self.kind not in ("flare", "flare_mt"):
            return self
        mt = self.flare.mt_encoder
        if mt and mt.startswith("tiny:") and mt != "tiny:m2m_100":
            raise FieldError(
                ("flare", "mt_encoder"), f"the tiny MT model is 'tiny:m2m_100' (NLLB architecture); got {mt!r}"
            )
        if self.kind == "flare_mt" and not mt:
            raise FieldError(
                ("flare", "mt_encoder"),
                "method.kind flare_mt needs an MT model here, e.g. facebook/nllb-200-distilled-600M",
            )
        targets, fusing = self.lora.target_modules, self.flare.fusion_modules
        if isinstance(targets, list) and fusing and set(fusing) - set(targets):
            raise FieldError(
                ("flare", "fusion_modules"),
                f"{sorted(set(fusing) - set(targets))} are not adapted by "
                f"LoRA; expected a subset of lora.target_modules {targets}",
            )
        if self.flare.fusion == "cross_attention" and self.lora.r % self.flare.cross_attention_heads:
            raise FieldError(
                ("flare", "cross_attention_heads"),
                f"cross_attention heads ({self.flare.cross_attention_heads})"
                f" must divide the LoRA rank r ({self.lora.r})",
            )
        return self

    def flare_config(self) -> FlareConfig | None:
        """The FlareConfig of this method (None for the baselines; mt_encoder only for flare_mt)."""
        if self.kind not in ("flare", "flare_mt"):
            return None
        return self.flare if self.kind == "flare_mt" else dataclasses.replace(self.flare, mt_encoder=None)


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
    with_ablation: bool = Field(
        False,
        description="allow ASHA with search.grid, search.ablation or search.seeds (it stops cells and "
        "seeds on early epochs, which biases the comparison); refused unless true",
    )


def _lists_twice(values: list[Any]) -> bool:
    """Does the list hold a value twice (``==``)? In linear time for hashable values (YAML's scalars)."""
    seen: set[Any] = set()
    unhashable: list[Any] = []  # lists and mappings: compared one by one
    for value in values:
        try:
            if value in seen:
                return True
            seen.add(value)
        except TypeError:
            if value in unhashable:
                return True
            unhashable.append(value)
    return False


BASELINE_ARM = "baseline"  # the name of an ablation's baseline arm (its MLflow tag, its report row)


def arm_name(key: str, value: Any) -> str:
    """An ablation arm's name: the key it changes and its value there, ``method.flare.fusion=add``
    (a value other than a string as JSON: ``method.lora.r=16``, ``method.flare.fusion_layers=[0, 1]``)."""
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


class AblationSpec(_Section):
    """One factor at a time from a baseline: the baseline cell, then one arm per value listed in ``vary``, the
    baseline with that one key changed (the paper's Table 2: the fusion function, from FLARE's add_relu)."""

    baseline: dict[str, Any] = Field(
        default_factory=dict,
        description="dotted key path -> value: the baseline arm, every arm's other values (a key of vary not "
        "given here keeps the config's value)",
    )
    vary: dict[str, list[Any]] = Field(
        min_length=1,
        description="dotted key path -> values: one arm per value, the baseline with that key alone changed "
        "(a value equal to the baseline's is the baseline, not an arm)",
    )

    @model_validator(mode="after")
    def _lists(self) -> "AblationSpec":
        for key, values in self.vary.items():
            if not values:
                raise FieldError(("vary", key), "expected a non-empty list of values")
            if _lists_twice(values):
                raise FieldError(("vary", key), f"{values} lists a value twice: every arm runs exactly once")
        return self

    @property
    def keys(self) -> list[str]:
        """The keys the ablation sets: the baseline's, then those only vary names."""
        return list(dict.fromkeys([*self.baseline, *self.vary]))

    def arms(self) -> list[tuple[str, dict[str, Any]]]:
        """Each arm's name and cell (``{key: value}``): the baseline first (:data:`BASELINE_ARM`), then per key of
        ``vary`` and per value unlike the baseline's, the baseline with that value (:func:`arm_name`)."""
        out = [(BASELINE_ARM, dict(self.baseline))]
        for key, values in self.vary.items():
            out += [
                (arm_name(key, value), {**self.baseline, key: value})
                for value in values
                if key not in self.baseline or value != self.baseline[key]
            ]
        return out

    def arm_of(self, cell: dict[str, Any]) -> str:
        """The name of the arm a cell (an arm's values, with a grid's) belongs to: the first key of ``vary``
        whose value differs from the baseline's (a key the cell leaves out, which its method does not read,
        differs in nothing), else the baseline."""
        for key in self.vary:
            if key in cell and (key not in self.baseline or cell[key] != self.baseline[key]):
                return arm_name(key, cell[key])
        return BASELINE_ARM


class AdaptiveSeeds(_Section):
    """Seeds where they decide something (:mod:`flare_ray.search.seeding`): every cell runs ``min`` seeds, then,
    round by round, one more seed goes to each cell whose comparison with the current best cell is undecided (its
    paired-bootstrap 95 % interval of the validation difference contains 0), up to ``max``."""

    min: int = Field(ge=1, description="seeds every cell runs")
    max: int = Field(description="seeds a cell runs at most (more than min)")
    start: int = Field(0, description="the first seed: the seeds are start, start + 1, ..., start + max - 1")

    @model_validator(mode="after")
    def _bounds(self) -> "AdaptiveSeeds":
        if self.max == self.min:
            raise FieldError("max", f"equals min ({self.min}): every cell runs the same seeds; list them instead")
        if self.max < self.min:
            raise FieldError("max", f"{self.max} is below min ({self.min})")
        return self

    @property
    def seeds(self) -> list[int]:
        """Every seed a cell may run with, in the order cells get them."""
        return list(range(self.start, self.start + self.max))


def _seeds_kind(value: Any) -> str:
    return "adaptive" if isinstance(value, (dict, AdaptiveSeeds)) else "list"


# search.seeds: a list of seeds, or {min, max} (adaptive); tagged so that a mistake in either is one error
SEEDS_TAGS = ("list", "adaptive")
Seeds = Annotated[
    Annotated[list[int], Tag("list")] | Annotated[AdaptiveSeeds, Tag("adaptive")], Discriminator(_seeds_kind)
]


class SearchSpec(_Section):
    """The search: space, sampler, scheduler, budget and objective."""

    space: dict[str, Distribution] = Field(default_factory=dict, description="dotted key path -> distribution")
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description="dotted key path -> values: every cell of "
        "their product runs (Ray Tune's grid search); with a space, each cell is a "
        "search of its own",
    )
    ablation: AblationSpec | None = Field(
        None,
        description="one factor at a time: {baseline: {key: value}, vary: {key: [values]}}: the baseline and "
        "one arm per value of vary, each run like a grid cell (once per seed); with a grid, every arm in every "
        "cell; the report compares every arm with the baseline",
    )
    seeds: Seeds | None = Field(
        None,
        description="run every cell, or every sampled configuration, "
        "once with each training.seed; selection uses the mean over seeds. {min, max, start}: with cells "
        "and no space, min seeds per cell, then one more per round to each cell still undecided against the "
        "best cell, up to max (seeds start, start + 1, ...)",
    )
    sampler: SamplerSpec = Field(default_factory=SamplerSpec, description="Optuna sampler")
    scheduler: SchedulerSpec | None = Field(None, description="null: every trial runs all epochs")
    num_samples: int | None = Field(
        None,
        ge=1,
        description="configurations sampled per target language (per grid "
        "cell); null: 8, or with a grid and no space 1 (each cell runs once per seed)",
    )
    max_concurrent_trials: int | None = Field(
        None,
        ge=1,
        description="null: as many Train runs as the cluster's "
        "resources hold when the sweep starts, shared by its languages (set it "
        "on an autoscaling cluster)",
    )
    metric: str | None = Field(None, description="'validation/<metric>'; null: the task's primary metric")
    mode: Literal["max", "min"] = Field("max", description="maximise or minimise the metric")
    max_failures: int = Field(0, ge=-1, description="retries of a failed trial (-1: unlimited)")
    worker_max_failures: int = Field(0, ge=-1, description="Ray Train worker-group restarts within a trial")

    @field_validator("space", mode="before")
    @classmethod
    def _loguniform(cls, space: Any) -> Any:
        return with_float_log(space)

    @model_validator(mode="after")
    def _ablation(self) -> "SearchSpec":
        for key, values in self.grid.items():
            if not values:
                raise FieldError(("grid", key), "expected a non-empty list of values")
            if _lists_twice(values):
                raise FieldError(("grid", key), f"{values} lists a value twice: every cell runs exactly once")
            if key in self.space:
                raise FieldError(("grid", key), "is also in search.space; a key is either gridded or sampled")
        ablation = self.ablation
        for key in ablation.keys if ablation else []:
            where = ("ablation", "baseline" if key in ablation.baseline else "vary", key)
            for other in ("grid", "space"):
                if key in getattr(self, other):
                    raise FieldError(where, f"is also in search.{other}; a key is either ablated, gridded or sampled")
        if isinstance(self.seeds, AdaptiveSeeds) and (not self.cells or self.space):
            raise FieldError(
                "seeds",
                "adaptive seeds ({min, max}) compare cells: they need search.grid or search.ablation and no "
                "search.space; list the seeds instead",
            )
        if isinstance(self.seeds, list) and not self.seeds:
            raise FieldError("seeds", "expected at least one seed")
        if self.seeds is not None:
            if len(set(self.seed_list)) != len(self.seed_list):
                raise FieldError("seeds", f"{self.seeds} lists a seed twice")
            for where in ("grid", "space"):
                if "training.seed" in getattr(self, where):
                    raise FieldError((where, "training.seed"), "search.seeds sets training.seed; remove one of them")
            if ablation and "training.seed" in ablation.keys:
                raise FieldError(
                    ("ablation", "vary", "training.seed"), "search.seeds sets training.seed; remove one of them"
                )
        if self.num_samples is None:
            self.num_samples = 1 if self.cells and not self.space else 8
        if self.cells and not self.space and self.num_samples != 1:
            raise FieldError(
                "num_samples",
                f"a grid or an ablation without a space runs each cell once (per seed); got num_samples "
                f"{self.num_samples}: use search.seeds to repeat cells",
            )
        if self.scheduler is not None and self.adaptive_seeds is not None:
            raise FieldError(
                "scheduler",
                "adaptive seeds ({min, max}) compare each cell's best epochs over whole runs; ASHA would stop "
                "them early: set scheduler: null, or list the seeds",
            )
        if self.scheduler is not None and (self.cells or self.seeds) and not self.scheduler.with_ablation:
            raise FieldError(
                "scheduler",
                "ASHA stops trials of some cells (or arms) and seeds early, which biases a grid or seed "
                "ablation; set scheduler: null, or scheduler.with_ablation: true to accept that",
            )
        return self

    @property
    def cells(self) -> bool:
        """Does the search run cells (a grid's, an ablation's arms, or both)?"""
        return bool(self.grid or self.ablation)

    def cell_values(self, key: str) -> list[Any]:
        """The values the grid and the ablation's arms give ``key`` (empty: neither sets it)."""
        arms = self.ablation.arms() if self.ablation and key in self.ablation.keys else []
        return [*self.grid.get(key, []), *(cell[key] for _, cell in arms if key in cell)]

    @property
    def cell_keys(self) -> list[str]:
        """Every key a cell sets: the grid's, then the ablation's."""
        return [*self.grid, *(self.ablation.keys if self.ablation else [])]

    @property
    def seed_list(self) -> list[int | None]:
        """The seeds each configuration may run with ([None]: the config's own training.seed, once); with
        adaptive seeds, all ``max`` of them (a cell runs the first ``min`` to ``max``)."""
        if isinstance(self.seeds, AdaptiveSeeds):
            return list(self.seeds.seeds)
        return list(self.seeds) if self.seeds else [None]

    @property
    def adaptive_seeds(self) -> AdaptiveSeeds | None:
        """``search.seeds`` as ``{min, max}`` (None: a list of seeds, or none)."""
        return self.seeds if isinstance(self.seeds, AdaptiveSeeds) else None


class ReportSpec(_Section):
    """The sweep's report (:mod:`flare_ray.report`), made at its end and again by ``flare-ray report``."""

    baseline: str | None = Field(
        None,
        min_length=1,
        description="a row to compare every other row with (its name, e.g. 'flare, fusion=add', or its method, "
        "e.g. lora): the report gives each row's difference to it with a paired-bootstrap 95% interval and "
        "p-value; null: none, or with search.ablation its baseline arm, the row 'baseline' (with a grid, each "
        "row's difference to the baseline arm of its own grid cell) "
        "(flare-ray report --baseline overrides it)",
    )


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
    report: ReportSpec = Field(default_factory=ReportSpec, description="the report made at the end of the sweep")
    translation: TranslationSpec = Field(
        default_factory=TranslationSpec,
        description="the sweep's translation stage (task.splits: mt without task.mt_dir): "
        "the NLLB-200 model and how to run it",
    )
    storage_path: str = Field(
        "outputs",
        min_length=1,
        description="Ray Tune storage (trial folders, checkpoints): a local folder or a URI (file://, s3://, gs://)",
    )

    # Every key path that the checks across sections (_across_sections) read; keep it in step with them (a
    # test records what they read). A search sample that changes none of these is valid when each section it
    # changes is valid on its own: flare_ray.experiment.space checks the search space section by section.
    ACROSS_KEYS: ClassVar[tuple[str, ...]] = (
        "name",
        "task.name",
        "task.splits",
        "task.mt_dir",
        "training.epochs",
        "training.compile",
        "training.padding_free",
        "scaling.deepspeed",
        "search",
        "tracking",
        "report.baseline",
        "storage_path",
    )
    _source: str | None = PrivateAttr(None)  # the YAML file, set by load_experiment
    _translates: bool = PrivateAttr(False)  # task.mt_dir was not given: the sweep makes the translations there

    @field_validator("storage_path", mode="before")
    @classmethod
    def _supported(cls, value: Any) -> Any:
        """A blank storage, or a URI of a store a sweep cannot write (``ftp://``), refused before Ray starts."""
        problem = storage_problem(value) if isinstance(value, str) else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("storage_path")
    @classmethod
    def _local_absolute(cls, value: str) -> str:
        return local_path(value)

    @model_validator(mode="after")
    def _across_sections(self) -> "ExperimentConfig":
        metrics = (*TASKS[self.task.name].metrics(), "loss")  # loss: of the validation split, a smooth curve
        if self.search.metric is None:
            self.search.metric = f"validation/{TASKS[self.task.name].primary_metric}"
        split, _, metric = self.search.metric.partition("/")
        if split != "validation" or metric not in metrics:
            raise FieldError(
                ("search", "metric"),
                f"task {self.task.name} reports no {self.search.metric!r}; "
                f"expected one of {[f'validation/{m}' for m in metrics]}",
            )
        if self.search.adaptive_seeds is not None and metric == "loss":
            raise FieldError(
                ("search", "seeds"),
                "adaptive seeds compare cells example by example; the validation loss has no per-example "
                "form here: set search.metric to a task metric, or list the seeds",
            )
        scheduler = self.search.scheduler
        if scheduler and scheduler.grace_period > self.training.epochs:
            raise FieldError(
                ("search", "scheduler", "grace_period"),
                f"grace period {scheduler.grace_period} is longer than training.epochs ({self.training.epochs})",
            )
        if self.training.compile and self.scaling.deepspeed is not None:
            raise FieldError(
                ("training", "compile"),
                "torch.compile of the trial's model is for the DDP engine; under scaling.deepspeed set "
                "DeepSpeed's own compile section instead, or training.compile: false",
            )
        if self.training.padding_free:  # the family where known without loading anything (else build_trial checks)
            family = self.model.family or TINY_FAMILIES.get(self.model.tiny_architecture or "")
            kind, fusion = self.method.kind, self.method.flare.fusion
            problem = padding_free_problem(family, self.model.head, kind, fusion)
            if problem is not None:
                raise FieldError(("training", "padding_free"), f"true: {problem}; expected false")
        if self.tracking.experiment_name is None:
            self.tracking.experiment_name = self.name
        ablation = self.search.ablation
        # The ablation's baseline holds every key it varies, the config's value where not given (read once, when
        # the file is loaded: a sample, an arm or cell written in later, changes no key of search.ablation).
        if ablation is not None:
            data = self.model_dump(mode="json")
            for key in ablation.vary:
                if key not in ablation.baseline:
                    try:
                        ablation.baseline[key] = get_path(data, key.split("."))
                    except (KeyError, TypeError, ValueError):
                        pass  # no such key: the search space's checks name it (flare_ray.experiment.space)
            if len(ablation.arms()) == 1:
                raise FieldError(
                    ("search", "ablation", "vary"),
                    "every value listed equals the baseline's: expected at least one arm",
                )
            if self.report.baseline is None:  # the report's Δ columns: every arm against the baseline (of its cell)
                self.report.baseline = BASELINE_ARM
        if "mt" in self.task.splits.values() and self.task.mt_dir is None:  # the sweep translates into its storage
            if is_remote(self.storage_path):
                raise FieldError(
                    ("task", "mt_dir"),
                    f"task.splits reads machine translations and storage_path is "
                    f"remote ({self.storage_path}): the sweep translates into a local or shared folder; "
                    "expected task.mt_dir (a folder every node reads), or a local storage_path",
                )
            self.task.mt_dir = local_folder(self.storage_path) / MT_FOLDER
            self._translates = True
        return self

    @property
    def translates(self) -> bool:
        """Does the sweep make its translations (into ``<storage_path>/mt``, where ``task.mt_dir`` was not
        given)? A ``task.mt_dir`` the config names holds translations made elsewhere, read as they are."""
        return self._translates

    @property
    def source(self) -> str | None:  # the YAML file this config was loaded from (None if built in code)
        return self._source

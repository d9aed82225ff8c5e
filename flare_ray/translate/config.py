"""The YAML configuration of ``python -m flare_ray.translate``, validated with pydantic.

Every key is described here once; ``--help`` prints these descriptions. An
unknown key, a bad value, or a language without an NLLB-200 code is a
:class:`ConfigError` naming the file and the key, raised before any data or
model is loaded.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
)

from flare_ray.tasks.base import ROLES, Role, TaskConfig

from flare_ray.languages import nllb_language
from .markers import Markers

DEFAULT_MODEL = "facebook/nllb-200-3.3B"
MODELS = ("facebook/nllb-200-3.3B", "facebook/nllb-200-distilled-600M")


class ConfigError(ValueError):
    """A configuration that cannot be used; the message names the file and the key."""


class TranslateConfig(BaseModel):
    """What to translate, with which NLLB-200 model, where to, and how to run it."""

    model_config = ConfigDict(extra="forbid")

    task: TaskConfig = Field(description="which task's splits to translate (each role with the task's default recipe)")
    mt_dir: Path = Field(description="output folder: <mt_dir>/<task>/<language>/<role>.parquet and <role>.provenance.json")
    roles: list[Role] = Field(
        default_factory=lambda: list(ROLES),
        description="roles to translate: train and validation from English into the language, test from the language into English",
    )
    model: str = Field(
        DEFAULT_MODEL, description=f"NLLB-200 checkpoint: a hub id ({', '.join(MODELS)}) or a local folder"
    )
    batch_size: PositiveInt = Field(16, description="segments per translation batch (per actor)")
    max_length: PositiveInt = Field(
        512, description="tokens per input segment (longer ones are truncated, and counted) and per translation"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="model weights: auto is bfloat16 on GPU, float32 on CPU"
    )
    concurrency: PositiveInt | None = Field(
        None, description="translation actors, each loading the model once; default: GPUs in the cluster / num_gpus, or 1"
    )
    num_gpus: NonNegativeFloat | None = Field(
        None, description="GPUs per actor; default: 1 if the Ray cluster has GPUs, else 0"
    )
    num_cpus: PositiveFloat = Field(1.0, description="CPUs per actor")
    markers: tuple[str, str] = Field(
        ("[", "]"),
        description="QA train and validation: the pair wrapped around the answer in the English context to carry it "
        "through translation (records whose markers are lost are dropped); test contexts are translated without "
        "markers, so the test input does not depend on the gold answer, and keep empty source_answers",
    )

    @field_validator("task")
    @classmethod
    def _language_known(cls, task: TaskConfig) -> TaskConfig:
        from flare_ray.tasks import TASKS

        languages = TASKS[task.name].languages
        if task.language not in languages:
            raise ValueError(f"language {task.language!r} is not a language of {task.name}; expected one of {sorted(languages)}")
        if task.splits or task.mt_dir:
            raise ValueError("task.splits and task.mt_dir do not apply: each role is translated from the task's "
                             "default recipe, and written under mt_dir")
        nllb_language(task.language)  # ValueError if NLLB has no code and no fallback
        return task

    @field_validator("roles")
    @classmethod
    def _roles_unique(cls, roles: list[Role]) -> list[Role]:
        if not roles or len(set(roles)) != len(roles):
            raise ValueError(f"expected a non-empty list of distinct roles from {list(ROLES)}, got {roles}")
        return roles

    @field_validator("markers")
    @classmethod
    def _markers_usable(cls, markers: tuple[str, str]) -> tuple[str, str]:
        Markers(*markers)
        return markers

    @field_validator("model")
    @classmethod
    def _local_model_exists(cls, model: str) -> str:
        path = Path(model).expanduser()
        if path.exists():
            return str(path.resolve())
        if model.startswith(("/", "./", "../", "~")):
            raise ValueError(f"local model folder {model!r} not found")
        return model  # a hub id

    def task_config(self) -> TaskConfig:
        return self.task

    def answer_markers(self) -> Markers:
        return Markers(*self.markers)


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] = TaskConfig if loc[:1] == ("task",) and len(loc) == 2 else TranslateConfig
    return list(model.model_fields)


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    if error["type"] == "extra_forbidden":
        return f"{key}: unknown key; expected one of {_allowed_keys(error['loc'])}"
    if error["type"] == "missing":
        return f"{key}: required key is missing"
    message = error["msg"].removeprefix("Value error, ")
    return f"{key}: {message} (got {error['input']!r})" if error["type"] != "value_error" else f"{key}: {message}"


def parse_config(data: Any, source: str = "config") -> TranslateConfig:
    """A validated configuration from a mapping; :class:`ConfigError` naming ``source`` and every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of configuration keys, got {type(data).__name__}")
    try:
        return TranslateConfig.model_validate(data)
    except ValidationError as err:
        lines = "\n".join(f"  {_describe(e)}" for e in err.errors())
        raise ConfigError(f"{source}: invalid configuration:\n{lines}") from None


def load_config(path: str | Path) -> TranslateConfig:
    """Read and validate a YAML configuration file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: configuration file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    return parse_config(data, str(path))


def describe_keys() -> str:
    """One line per configuration key (``task`` sub-keys indented), for ``--help``."""

    def lines(model: type[BaseModel], indent: str) -> list[str]:
        out = []
        for key, field in model.model_fields.items():
            if field.is_required():
                default = "required"
            elif field.get_default(call_default_factory=True) is None:
                default = "optional"
            else:
                value = field.get_default(call_default_factory=True)
                default = f"default {list(value) if isinstance(value, tuple) else value}"
            line = f"{indent}{key}: {field.description} ({default})"
            out.append(textwrap.fill(line, width=100, subsequent_indent=indent + "    "))
            if key == "task":
                out += lines(TaskConfig, indent + "  ")
        return out

    return "\n".join(lines(TranslateConfig, "  "))

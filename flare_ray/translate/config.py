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

from flare_ray.configfile import ConfigFileError, Problem, YAMLSyntaxError, parse_yaml, problems_of, read_config_text
from flare_ray.languages import nllb_language
from flare_ray.tasks.base import ROLES, Role, TaskConfig

from .markers import Markers

DEFAULT_MODEL = "facebook/nllb-200-3.3B"
MODELS = ("facebook/nllb-200-3.3B", "facebook/nllb-200-distilled-600M")


class ConfigError(ConfigFileError):
    """A configuration that cannot be used; the message names the file, the line and the key."""

    what = "configuration"


NOT_HERE = ("splits", "mt_dir")  # task keys that do not apply: each role is translated from its default recipe


class TranslationSpec(BaseModel):
    """How to translate: the NLLB-200 model and how to run it. The experiment's ``translation`` section (the
    sweep's translation stage), and the settings of ``python -m flare_ray.translate``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(
        DEFAULT_MODEL,
        description=f"NLLB-200 checkpoint: a hub id ({', '.join(MODELS)}), a local folder or tiny:m2m_100",
    )
    batch_size: PositiveInt = Field(16, description="segments per translation batch (per actor)")
    max_length: PositiveInt = Field(
        512, description="tokens per input segment (longer ones are truncated, and counted) and per translation"
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="model weights: auto is bfloat16 on GPU, float32 on CPU"
    )
    concurrency: PositiveInt | None = Field(
        None,
        description="translation actors, each loading the model once; default: GPUs in the cluster / num_gpus, or 1",
    )
    num_gpus: NonNegativeFloat | None = Field(
        None, description="GPUs per actor; default: 1 if the Ray cluster has GPUs, else 0"
    )
    num_cpus: PositiveFloat = Field(1.0, description="CPUs per actor")
    markers: tuple[str, str] = Field(
        ("[", "]"),
        description="QA: the pair wrapped around the answer in the context to carry it through translation, as the "
        "authors do (train and validation records whose markers are lost are dropped; test records keep empty "
        "source_answers, and translate-test leaves them out)",
    )

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
        return model  # a hub id, or tiny:m2m_100

    def answer_markers(self) -> Markers:
        return Markers(*self.markers)


class TranslateConfig(TranslationSpec):
    """What to translate (a task's language, which roles, where to), and how (:class:`TranslationSpec`)."""

    task: TaskConfig = Field(description="which task's splits to translate (each role with the task's default recipe)")
    mt_dir: Path = Field(
        description="output folder: <mt_dir>/<task>/<language>/<role>.parquet and <role>.provenance.json"
    )
    roles: list[Role] = Field(
        default_factory=lambda: list(ROLES),
        description="roles to translate: train and validation from English into the language, test from the language into English",
    )
    back_translate: bool = Field(
        False,
        description="also translate the (translated) training set back into English, as back_translation_<field> "
        "columns of the train split: X-Mixup's scheduled source (the sweep sets it when X-Mixup runs)",
    )

    @field_validator("task")
    @classmethod
    def _language_known(cls, task: TaskConfig) -> TaskConfig:
        from flare_ray.tasks import TASKS

        languages = TASKS[task.name].source_languages(task.hub_id)
        if task.language not in languages:
            raise ValueError(
                f"language {task.language!r} is not a language of {task.name}; expected one of {sorted(languages)}"
            )
        if any(getattr(task, key) for key in NOT_HERE):
            raise ValueError(
                "task.splits and task.mt_dir do not apply: each role is translated from the task's "
                "default recipe, and written under mt_dir"
            )
        nllb_language(task.language)  # ValueError if NLLB has no code and no fallback
        return task

    @field_validator("roles")
    @classmethod
    def _roles_unique(cls, roles: list[Role]) -> list[Role]:
        if not roles or len(set(roles)) != len(roles):
            raise ValueError(f"expected a non-empty list of distinct roles from {list(ROLES)}, got {roles}")
        return roles

    def task_config(self) -> TaskConfig:
        return self.task


def parse_config(data: Any, source: str = "config", lines: dict | None = None) -> TranslateConfig:
    """A validated configuration from a mapping; :class:`ConfigError` naming ``source``, the line and every bad key."""
    if not isinstance(data, dict):
        raise ConfigError(source, [Problem((), f"expected a mapping of configuration keys, got {type(data).__name__}")])
    try:
        return TranslateConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, problems_of(err, TranslateConfig), lines) from None


def load_config(path: str | Path) -> TranslateConfig:
    """Read and validate a YAML configuration file (within the limits of :mod:`flare_ray.configfile`: size,
    nesting, aliases, UTF-8)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), [], summary=f"{path}: configuration file not found")
    try:
        data, lines, duplicates = parse_yaml(read_config_text(path), str(path))
    except OSError as err:
        raise ConfigError(
            str(path), [], summary=f"{path}: cannot read the configuration: {err.strerror or err}"
        ) from None
    except YAMLSyntaxError as err:
        raise ConfigError(str(path), [], summary=str(err)) from None
    if duplicates:
        raise ConfigError(
            str(path), [Problem(p, f"duplicate key (first at line {first})") for p, first in duplicates], lines
        )
    return parse_config(data, str(path), lines)


def describe_keys() -> str:
    """One line per configuration key (``task`` sub-keys indented), for ``--help``."""

    def lines(model: type[BaseModel], indent: str) -> list[str]:
        out = []
        for key, field in model.model_fields.items():
            if model is TaskConfig and key in NOT_HERE:
                continue
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

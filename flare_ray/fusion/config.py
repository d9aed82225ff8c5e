"""The FLARE adapter's configuration.

A FLARE adapter is a peft LoRA adapter (configured by peft's own ``LoraConfig``)
plus the options below, which say where and how the source-language
representations are fused into the LoRA bottleneck.
"""

from __future__ import annotations

import json
import re
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import ConfigDict, Field, StrictInt, TypeAdapter, ValidationError, field_validator
from pydantic.dataclasses import dataclass

CONFIG_NAME = "flare_config.json"


class SourceRepresentation(str, Enum):
    """Which source-language representation is fused into the modules of block ``i``.

    ``NEXT_BLOCK_OUTPUT`` (the paper, Sec. 3.1): the source after it has passed
        block ``i`` (``v_{i+1}``). The last block uses its own output (before any
        final norm of the model).
    ``MODULE_INPUT``: exactly what the same module sees in the source pass
        (for pre-norm models this is the normed block input).
    ``BLOCK_INPUT`` (the authors' public code): the raw residual stream entering
        block ``i`` (``v_i``); for pre-norm models this is *not* what q/v see.
    """

    NEXT_BLOCK_OUTPUT = "next_block_output"
    MODULE_INPUT = "module_input"
    BLOCK_INPUT = "block_input"


LAYER_GROUPS = ("all", "lower_half", "upper_half")
# The fusion functions that flare_ray.fusion.functions registers (a test keeps this in step): a config is
# checked against them without importing torch; once that module is imported, against its registry.
BUILTIN_FUSIONS = ("add", "mul", "add_relu", "cross_attention")
CROSS_ATTENTION_QUERIES = ("source", "target")
UNALIGNED = ("fuse_zero", "lora")
_RANGE = re.compile(r"^\s*(-?\d+)\s*-\s*(-?\d+)\s*$")


@dataclass(config=ConfigDict(extra="forbid"))
class FlareConfig:
    """Where and how FLARE fuses source representations into LoRA bottlenecks.

    Args:
        fusion: name of a registered fusion function (``add``, ``mul``,
            ``add_relu``, ``cross_attention`` or one you registered).
        fusion_modules: names (suffixes, as in peft's ``target_modules``) of the
            adapted modules that fuse. ``None``: the attention query and value
            projections of the architecture (peft's default LoRA targets).
            Adapted modules outside this set are plain LoRA.
        fusion_layers: which blocks of the fused stack fuse: ``"all"``,
            ``"lower_half"``, ``"upper_half"``, a list of block indices, or
            ranges such as ``"0-5"`` (inclusive) mixed with indices.
            Negative indices count from the last block.
        source_representation: see :class:`SourceRepresentation`.
        cross_attention_heads: heads of the ``cross_attention`` fusion (must
            divide ``r``).
        cross_attention_query: which side queries in ``cross_attention``.
            ``"source"`` (the paper, Sec. 3.2: ``softmax(W_Q S (W_K T)^T / sqrt(r)) W_V T``):
            at each target position the aligned source token queries the
            target's tokens. ``"target"``: each target token queries the whole
            source (lengths need not match; no alignment).
        unaligned: what a target position that fuses but has no aligned real
            source token (the target is longer than the source) computes.
            ``"fuse_zero"``: ``f(0, a_t)``, the source contributes a zero
            vector, as in the paper's formulation where ``S`` and ``T`` are both
            padded to ``m x r`` (pad content masked out). ``"lora"``: ``a_t``,
            plain LoRA. Positions outside the fusion mask (target padding,
            decoder answer tokens) are plain LoRA either way.
        mt_encoder: name or path of an MT model (M2M100/NLLB architecture) whose
            encoder supplies latent translations (FLARE-MT). ``None``: the
            source pass of the base model supplies the source representations.
        fusion_probability: in training, each instance fuses with this
            probability (the others train as plain LoRA); 1.0 fuses every one.
            The paper's train-only ablation (Appendix E) uses 0.5.
        source_at_inference: False: in eval mode the model never reads the
            source (no source pass; plain LoRA on the target), the paper's
            train-only ablation. True (default): it fuses at inference too.
    """

    fusion: str = Field("add_relu", description="a registered fusion function: add, mul, add_relu, cross_attention")
    fusion_modules: list[str] | None = Field(None, description="adapted modules that fuse; null: query and value")
    fusion_layers: StrictInt | str | list[StrictInt | str] = Field(
        "all", description="'all', 'lower_half', 'upper_half', block indices, ranges like '0-5'"
    )
    source_representation: SourceRepresentation = Field(
        SourceRepresentation.NEXT_BLOCK_OUTPUT, description="next_block_output (the paper), module_input or block_input"
    )
    cross_attention_heads: int = Field(1, ge=1, description="heads of the cross_attention fusion (must divide r)")
    cross_attention_query: Literal["source", "target"] = Field(
        "source", description="cross_attention: which side queries, 'source' (the paper, Sec. 3.2) or 'target'"
    )
    unaligned: Literal["fuse_zero", "lora"] = Field(
        "fuse_zero",
        description="target positions with no aligned source token: 'fuse_zero' (f(0, a_t), the "
        "padded formulation) or 'lora' (a_t, plain LoRA)",
    )
    mt_encoder: str | None = Field(None, description="MT model whose encoder supplies the source (FLARE-MT)")
    fusion_probability: float = Field(
        1.0,
        gt=0,
        le=1,
        description="in training, the probability that an instance "
        "fuses (else plain LoRA); 0.5 in the paper's train-only ablation (Appendix E)",
    )
    source_at_inference: bool = Field(
        True, description="false: no source at inference (eval mode is plain LoRA), the paper's train-only ablation"
    )

    @field_validator("fusion")
    @classmethod
    def _registered(cls, fusion: str) -> str:
        if fusion not in (names := registered_fusions()):
            raise ValueError(f"unknown fusion function {fusion!r}; expected one of {sorted(names)}")
        return fusion

    @field_validator("fusion_modules", mode="before")
    @classmethod
    def _one_module(cls, modules: Any) -> Any:
        return [modules] if isinstance(modules, str) else modules

    @field_validator("fusion_layers")
    @classmethod
    def _layers(cls, spec: Any) -> Any:
        try:  # its syntax and ranges' order; the blocks are checked against the model (experiment.checks)
            resolve_layers(spec, num_layers=None)
        except ValueError as err:
            raise ValueError(str(err).removeprefix("fusion_layers: ")) from None  # pydantic names the key
        return spec

    # -- serialisation -------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return TypeAdapter(FlareConfig).dump_python(self, mode="json")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FlareConfig":
        """The config that :meth:`to_dict` wrote; pydantic refuses a key it does not know (``extra="forbid"``)."""
        return cls(**d)

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> "FlareConfig":
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no FLARE config here (expected {CONFIG_NAME} next to the adapter)")
        try:
            saved = json.loads(path.read_text())
            saved.pop("extra", None)  # written before 0.3, never read
            # Saved before these options existed: the adapter was trained with what the code did then.
            for key, then in _BEFORE_OPTIONS.items():
                saved.setdefault(key, then)
            return cls.from_dict(saved)
        except ValidationError as err:  # pydantic's problems, each naming its key and what was expected
            from flare_ray.configfile import ConfigFileError, problems_of  # here, not on top: fusion imports no YAML

            raise ConfigFileError(str(path), problems_of(err, cls)) from None
        except (ValueError, TypeError) as err:
            raise ValueError(f"{path}: {err}") from err


# What adapters saved before an option existed were trained with (see FlareConfig.load).
_BEFORE_OPTIONS = {"cross_attention_query": "target", "unaligned": "lora"}


def registered_fusions() -> tuple[str, ...]:
    """The fusion functions a config may name: the registry of :mod:`flare_ray.fusion.functions` once it is
    imported (it holds those registered with ``@register_fusion`` too; registering one imports it), else the
    built-in ones; so checking a config imports no torch."""
    functions = sys.modules.get(f"{__package__}.functions")
    registry = getattr(functions, "FUSION_FUNCTIONS", None)
    return tuple(registry) if registry is not None else BUILTIN_FUSIONS


def resolve_layers(spec: str | int | Sequence[int | str], num_layers: int | None) -> list[int]:
    """Turn a ``fusion_layers`` spec into sorted, unique block indices in ``[0, num_layers)``.

    ``num_layers=None``: the model's number of blocks is unknown (the schema, before the model is known): the
    spec's syntax and its ranges' order are checked, and an empty list is returned."""
    if num_layers is None:
        if not _items(spec) and spec not in LAYER_GROUPS:
            raise ValueError("selects no block")
        for item in _items(spec):
            _bounds(item, None)
        return []
    if isinstance(spec, str) and spec in LAYER_GROUPS:
        half = num_layers // 2
        return {
            "all": list(range(num_layers)),
            "lower_half": list(range(half)),
            "upper_half": list(range(half, num_layers)),
        }[spec]
    out: set[int] = set()
    for item in _items(spec):
        lo, hi = _bounds(item, num_layers)
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError("selects no block")
    return sorted(out)


def _items(spec: str | int | Sequence[int | str]) -> Sequence[int | str]:
    """The indices and ranges of a spec other than a group: ``"0-1,5"`` is ``["0-1", "5"]``."""
    if isinstance(spec, str):
        return [] if spec in LAYER_GROUPS else [s for s in spec.split(",") if s.strip()]
    return [spec] if isinstance(spec, int) else spec


def _bounds(item: int | str, num_layers: int | None) -> tuple[int, int]:
    """The first and last block of an index or an inclusive range (negative ones count from the last block);
    ``num_layers=None``: as written, checked only for what holds in any model (a range's order, where its two
    ends count from the same side)."""
    if isinstance(item, bool):
        raise ValueError(f"{item!r} is not a block index")
    if isinstance(item, int):
        lo = hi = item
    elif isinstance(item, str) and _RANGE.match(item):
        lo, hi = (int(g) for g in _RANGE.match(item).groups())
    elif isinstance(item, str) and item.strip().lstrip("-").isdigit():
        lo = hi = int(item)
    else:
        raise ValueError(
            f"cannot read {item!r}; expected one of {LAYER_GROUPS}, a block index, or an inclusive range like '0-5'"
        )
    written = lo, hi
    if num_layers is not None:
        lo, hi = (v + num_layers if v < 0 else v for v in (lo, hi))
        if not (0 <= lo < num_layers and 0 <= hi < num_layers):
            raise ValueError(f"fusion_layers: {item!r} is outside the {num_layers} blocks of this model")
    if lo > hi and (num_layers is not None or (lo < 0) == (hi < 0)):
        blocks = f" (blocks {lo} to {hi} of {num_layers})" if (lo, hi) != written else ""
        raise ValueError(
            f"fusion_layers: {item!r} is a reversed range{blocks}; expected the lower block first, e.g. '{hi}-{lo}'"
        )
    return lo, hi

"""Where FLARE fuses: the blocks of the fused stack and the adapted modules in them.

The fused stack is the sequence of transformer blocks (a ``ModuleList``) that
holds the fused modules: the encoder's blocks for encoder-only and
encoder-decoder models (mT5 fuses in the encoder), the decoder's blocks for
decoder-only models. A *fusion site* is one adapted module in a selected block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from peft.tuners.lora import LoraLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
from torch import nn

from .config import FlareConfig, resolve_layers

_BLOCK_INDEX = re.compile(r"^(?P<stack>.+?)\.(?P<index>\d+)\.")


class ArchitectureFamily(str, Enum):
    ENCODER = "encoder"  # XLM-R: bidirectional, right padding, classification/span heads
    ENCODER_DECODER = "encoder_decoder"  # mT5: fuse in the encoder; generate answers or a task head
    DECODER = "decoder"  # Llama, Gemma 2: left-padded prompts, generate answers

    @classmethod
    def of(cls, model: nn.Module) -> "ArchitectureFamily":
        config = model.config
        if getattr(config, "is_encoder_decoder", False):
            return cls.ENCODER_DECODER
        if type(model).__name__.endswith("ForCausalLM"):
            return cls.DECODER
        return cls.ENCODER


@dataclass(frozen=True)
class FusionSite:
    name: str  # module name inside the transformers model
    block: int  # index of its block in the fused stack
    layer: LoraLayer  # the peft LoRA layer that wraps the frozen module


@dataclass(frozen=True)
class FusionPlan:
    family: ArchitectureFamily
    stack_name: str  # e.g. "model.layers", "roberta.encoder.layer", "encoder.block"
    blocks: nn.ModuleList
    sites: tuple[FusionSite, ...]

    @property
    def fused_blocks(self) -> list[int]:
        return sorted({s.block for s in self.sites})


def encoder_of(model: nn.Module) -> nn.Module:
    """The encoder stack of an encoder-decoder model, with or without a task head.

    transformers' ``get_encoder`` finds it through ``base_model`` as well
    (``MT5ForSequenceClassification`` keeps it at ``transformer.encoder``,
    ``MT5ForQuestionAnswering`` and the LM at ``encoder``), but falls back to the
    whole model when it finds none; that must not pass for an encoder.
    """
    encoder = model.get_encoder()
    if encoder is model:
        raise ValueError(f"FLARE: cannot find the encoder of {type(model).__name__} (get_encoder() returns the model)")
    return encoder


def default_fusion_modules(model_type: str) -> list[str]:
    try:
        return list(TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING[model_type])
    except KeyError:
        raise ValueError(
            f"FlareConfig.fusion_modules: no default attention query/value modules are known for "
            f"model type {model_type!r}; name them explicitly (e.g. ['q_proj', 'v_proj'])"
        ) from None


def _matches(name: str, patterns: list[str]) -> bool:
    return any(name == p or name.endswith("." + p) for p in patterns)


def plan_fusion(model: nn.Module, config: FlareConfig) -> FusionPlan:
    """Find the fusion sites of ``model`` (a transformers model with peft LoRA layers)."""
    family = ArchitectureFamily.of(model)
    root_prefix = ""
    if family is ArchitectureFamily.ENCODER_DECODER:
        encoder = encoder_of(model)
        root_prefix = next(n for n, m in model.named_modules() if m is encoder) + "."

    adapted = {n: m for n, m in model.named_modules() if isinstance(m, LoraLayer)}
    if not adapted:
        raise ValueError("FLARE needs a model with peft LoRA layers (call peft.get_peft_model first)")
    patterns = config.fusion_modules or default_fusion_modules(model.config.model_type)
    missing = [p for p in patterns if not any(_matches(n, [p]) for n in adapted)]
    if missing:
        suffixes = sorted({n.rsplit(".", 1)[-1] for n in adapted})
        raise ValueError(
            f"FlareConfig.fusion_modules: {missing} match no module that LoRA adapts; "
            f"adapted modules end in {suffixes} (fused modules must be a subset of peft's target_modules)"
        )

    candidates: dict[str, tuple[str, int]] = {}
    for name in adapted:
        if not name.startswith(root_prefix) or not _matches(name, patterns):
            continue
        found = _BLOCK_INDEX.match(name)
        if not found:
            raise ValueError(f"FLARE: cannot tell which transformer block the fused module {name!r} belongs to")
        candidates[name] = (found["stack"], int(found["index"]))
    stacks = {stack for stack, _ in candidates.values()}
    if len(stacks) != 1:
        raise ValueError(
            f"FLARE: fused modules must lie in one stack of blocks, found {sorted(stacks) or 'none'}; "
            "narrow FlareConfig.fusion_modules"
        )
    (stack_name,) = stacks
    blocks = model.get_submodule(stack_name)
    if not isinstance(blocks, nn.ModuleList):
        raise ValueError(f"FLARE: {stack_name!r} is not a list of transformer blocks")
    selected = set(resolve_layers(config.fusion_layers, num_layers=len(blocks)))
    sites = tuple(
        FusionSite(name=name, block=block, layer=adapted[name])
        for name, (_, block) in sorted(candidates.items(), key=lambda kv: (kv[1][1], kv[0]))
        if block in selected
    )
    return FusionPlan(family=family, stack_name=stack_name, blocks=blocks, sites=sites)

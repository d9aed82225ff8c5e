"""FLARE: representation fusion in LoRA bottlenecks, on unforked transformers and peft.

This package is the method only; it knows nothing of Ray or MLflow. Its configuration
(:class:`FlareConfig`, :mod:`.config`) imports only pydantic; everything else (torch,
transformers, peft) is imported when first used (``from flare_ray.fusion import FlareModel``),
so checking an experiment config does not load them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .config import FlareConfig, SourceRepresentation, resolve_layers

if TYPE_CHECKING:
    from .alignment import Alignment, align
    from .cache import CachedSource, SourceCache, SourceShards
    from .functions import FUSION_FUNCTIONS, FusionFunction, register_fusion
    from .model import (
        FlareModel,
        FusionContext,
        FusionNotAppliedError,
        default_task_type,
        get_flare_model,
        untrained_task_heads,
    )
    from .mt import load_mt_encoder
    from .sites import ArchitectureFamily, FusionPlan, FusionSite, plan_fusion
    from .source import SourceStates, run_source_pass

# name -> the submodule that defines it (imported on first access)
_LAZY = {
    "Alignment": "alignment", "align": "alignment", "CachedSource": "cache", "SourceCache": "cache",
    "SourceShards": "cache",
    "FUSION_FUNCTIONS": "functions", "FusionFunction": "functions", "register_fusion": "functions",
    "FlareModel": "model", "FusionContext": "model", "FusionNotAppliedError": "model",
    "default_task_type": "model", "get_flare_model": "model", "untrained_task_heads": "model",
    "load_mt_encoder": "mt",
    "ArchitectureFamily": "sites", "FusionPlan": "sites", "FusionSite": "sites", "plan_fusion": "sites",
    "SourceStates": "source", "run_source_pass": "source",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "FUSION_FUNCTIONS",
    "Alignment",
    "ArchitectureFamily",
    "CachedSource",
    "FlareConfig",
    "FlareModel",
    "FusionContext",
    "FusionFunction",
    "FusionNotAppliedError",
    "FusionPlan",
    "FusionSite",
    "SourceCache",
    "SourceShards",
    "SourceRepresentation",
    "SourceStates",
    "align",
    "default_task_type",
    "get_flare_model",
    "load_mt_encoder",
    "plan_fusion",
    "register_fusion",
    "resolve_layers",
    "run_source_pass",
    "untrained_task_heads",
]

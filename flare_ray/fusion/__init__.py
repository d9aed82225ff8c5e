"""FLARE: representation fusion in LoRA bottlenecks, on unforked transformers and peft.

This package is the method only; it knows nothing of Ray or MLflow.
"""

from .alignment import Alignment, align
from .config import FlareConfig, SourceRepresentation, resolve_layers
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

__all__ = [
    "FUSION_FUNCTIONS",
    "Alignment",
    "ArchitectureFamily",
    "FlareConfig",
    "FlareModel",
    "FusionContext",
    "FusionFunction",
    "FusionNotAppliedError",
    "FusionPlan",
    "FusionSite",
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

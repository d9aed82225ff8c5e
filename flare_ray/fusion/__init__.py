"""FLARE: representation fusion in LoRA bottlenecks, on unforked transformers and peft.

This package is the method only; it knows nothing of Ray or MLflow. Its configuration
(:class:`FlareConfig`, :mod:`.config`) imports only pydantic; everything else (torch,
transformers, peft) is imported when first used (``from flare_ray.fusion import FlareModel``),
so checking an experiment config does not load them.

The imports below are the one list of what the package exports (``__all__`` and the lazy names are read
from them): a name imported under ``if TYPE_CHECKING:`` is imported on first use; type checkers and IDEs
see every name. ``X as X`` marks a re-export for them and for linters.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import FlareConfig as FlareConfig
from .config import SourceRepresentation as SourceRepresentation
from .config import resolve_layers as resolve_layers

if TYPE_CHECKING:
    from .alignment import Alignment as Alignment
    from .alignment import align as align
    from .cache import CachedSource as CachedSource
    from .cache import SourceCache as SourceCache
    from .cache import SourceShards as SourceShards
    from .functions import FUSION_FUNCTIONS as FUSION_FUNCTIONS
    from .functions import FusionFunction as FusionFunction
    from .functions import register_fusion as register_fusion
    from .model import FlareModel as FlareModel
    from .model import FusionContext as FusionContext
    from .model import FusionNotAppliedError as FusionNotAppliedError
    from .model import default_task_type as default_task_type
    from .model import get_flare_model as get_flare_model
    from .model import untrained_task_heads as untrained_task_heads
    from .mt import load_mt_encoder as load_mt_encoder
    from .sites import ArchitectureFamily as ArchitectureFamily
    from .sites import FusionPlan as FusionPlan
    from .sites import FusionSite as FusionSite
    from .sites import plan_fusion as plan_fusion
    from .source import SourceStates as SourceStates
    from .source import run_source_pass as run_source_pass


def _exports() -> tuple[list[str], dict[str, str]]:
    """Every name this package exports, and name -> submodule of those it imports on first use: read from
    its own ``from .submodule import name`` lines, on top and under ``if TYPE_CHECKING:``."""
    body = ast.parse(Path(__file__).read_text(encoding="utf-8")).body
    lazy = next(node.body for node in body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")

    def names(statements: list[ast.stmt]) -> dict[str, str]:
        return {
            alias.asname or alias.name: node.module
            for node in statements
            if isinstance(node, ast.ImportFrom) and node.level == 1
            for alias in node.names
        }

    return sorted(names(body) | names(lazy)), names(lazy)


__all__, _LAZY = _exports()


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""The paper's baselines that are models of their own: X-Mixup (``xmixup``). Input-level fusion is an
encoding (:mod:`flare_ray.tasks.encoding`); zero-shot and translate-test score the stage-1 model.

:class:`XMixupConfig` imports only pydantic; :class:`XMixupModel` (torch, peft) is imported on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import XMixupConfig

if TYPE_CHECKING:
    from .xmixup import XMixupModel


def __getattr__(name: str) -> Any:
    if name == "XMixupModel":
        from .xmixup import XMixupModel

        return XMixupModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["XMixupConfig", "XMixupModel"]

"""The paper's baselines that are models of their own: X-Mixup (``xmixup``). Input-level fusion is an
encoding (:mod:`flare_ray.tasks.encoding`); zero-shot and translate-test score the stage-1 model."""

from .xmixup import XMixupConfig, XMixupModel

__all__ = ["XMixupConfig", "XMixupModel"]

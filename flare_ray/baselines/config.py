"""X-Mixup's options (the experiment YAML's ``method.xmixup``): a leaf module that imports only pydantic,
so a config is checked without torch (the model is :class:`flare_ray.baselines.xmixup.XMixupModel`)."""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field, TypeAdapter
from pydantic.dataclasses import dataclass


@dataclass(config=ConfigDict(extra="forbid"))
class XMixupConfig:
    """X-Mixup's options (the defaults are the authors' scripts for XLM-R)."""

    layer: int | None = Field(
        None,
        description="block whose attention sub-layer mixes; null: the authors' choice, "
        "the first block for classification, block 15 of 24 (scaled to the depth) for QA",
    )
    ratio: float = Field(0.5, gt=0, le=1, description="lambda_0: the mixing ratio is ratio * sigmoid(w H + b)")
    alpha: float | None = Field(
        None,
        ge=0,
        le=1,
        description="weight of the source's task loss (the target's: "
        "1 - alpha); null: the authors' 0.4 for classification, 0.2 for QA (the English span)",
    )
    kl_weight: float = Field(1.0, ge=0, description="weight of KL(p_source || p_target) (classification)")
    mse_weight: float = Field(1.0, ge=0, description="weight of the MSE between source and target representations")
    schedule_k: float | None = Field(
        None,
        gt=0,
        description="the source schedule's k: at training step t the source "
        "is the gold English with probability k / (k + exp(t / k)), else the "
        "back-translation; null: the authors' 1000 (classification), 2000 (QA)",
    )
    seed: int = Field(0, description="seed of the schedule's draws")

    def to_dict(self) -> dict[str, Any]:
        return TypeAdapter(XMixupConfig).dump_python(self, mode="json")

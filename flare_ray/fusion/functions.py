"""Fusion functions: how the down-projected source (``a_s = A x_S``) and target
(``a_t = A x_T``) representations are combined in the LoRA bottleneck (Sec. 3.2).

Every function lives in :data:`FUSION_FUNCTIONS`; adding one is one class with
``@register_fusion("name")``. A *positional* function gets ``a_s`` already
aligned to the target positions (``[batch, target_len, r]``); a non-positional
one (cross-attention) gets the whole source sequence and its padding mask.
Positions where nothing is fused (no aligned source token, target padding,
decoder answer tokens) are handled by the caller: they stay plain LoRA.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

FUSION_FUNCTIONS: dict[str, type["FusionFunction"]] = {}


def register_fusion(name: str) -> Callable[[type["FusionFunction"]], type["FusionFunction"]]:
    """Class decorator adding a fusion function to the registry under ``name``."""

    def wrap(cls: type[FusionFunction]) -> type[FusionFunction]:
        if name in FUSION_FUNCTIONS:
            raise ValueError(f"fusion function {name!r} is already registered")
        cls.name = name
        FUSION_FUNCTIONS[name] = cls
        return cls

    return wrap


class FusionFunction(nn.Module):
    """``h = f(a_s, a_t)`` in the bottleneck of one fused module."""

    name: ClassVar[str]
    positional: ClassVar[bool] = True

    def __init__(self, r: int, heads: int = 1) -> None:
        super().__init__()
        self.r = r

    def forward(self, a_s: torch.Tensor, a_t: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_fusion("add")
class Add(FusionFunction):
    def forward(self, a_s, a_t, source_mask):
        return a_s + a_t


@register_fusion("mul")
class Mul(FusionFunction):
    def forward(self, a_s, a_t, source_mask):
        return a_s * a_t


@register_fusion("add_relu")
class AddRelu(FusionFunction):
    """The paper's default: ``relu(a_s) + relu(a_t)``."""

    def forward(self, a_s, a_t, source_mask):
        return F.relu(a_s) + F.relu(a_t)


@register_fusion("cross_attention")
class CrossAttention(FusionFunction):
    """Multi-head attention in the r-dim bottleneck: the target queries the source.

    ``softmax(Q K^T / sqrt(r / heads)) V`` with ``Q = W_Q a_t``, ``K = W_K a_s``,
    ``V = W_V a_s`` and a key-padding mask over the source, so source and target
    lengths may differ. With one head this is the paper's single-head module
    (with the target as query). The only fusion that adds parameters.
    """

    positional = False

    def __init__(self, r: int, heads: int = 1) -> None:
        super().__init__(r)
        if r % heads:
            raise ValueError(f"cross_attention: heads ({heads}) must divide the LoRA rank r ({r})")
        self.heads = heads
        self.q = nn.Linear(r, r, bias=False)
        self.k = nn.Linear(r, r, bias=False)
        self.v = nn.Linear(r, r, bias=False)

    def forward(self, a_s, a_t, source_mask):
        b, t, r = a_t.shape
        split = lambda x: x.view(b, -1, self.heads, r // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(a_t)), split(self.k(a_s)), split(self.v(a_s))
        keep = source_mask.bool()
        # A row with no source token at all would be all -inf; the caller keeps
        # plain LoRA there, so let it attend anywhere to stay finite.
        keep = keep | ~keep.any(dim=-1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return out.transpose(1, 2).reshape(b, t, r)

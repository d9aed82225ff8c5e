"""Fusion functions: how the down-projected source (``a_s = A x_S``) and target
(``a_t = A x_T``) representations are combined in the LoRA bottleneck (Sec. 3.2).

Every function lives in :data:`FUSION_FUNCTIONS`; adding one is one class with
``@register_fusion("name")``. A *positional* function gets ``a_s`` already
aligned to the target positions (``[batch, target_len, r]``, zero where no real
source token is aligned) and, as ``key_mask``, the target tokens that fuse; a
non-positional one (cross-attention with the target as query) gets the whole
source sequence and its padding mask. Which positions take the fused value is
the caller's business (see :class:`~flare_ray.fusion.config.FlareConfig`
``unaligned``): target padding and decoder answer tokens stay plain LoRA.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .config import CROSS_ATTENTION_QUERIES

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
    """``h = f(a_s, a_t)`` in the bottleneck of one fused module.

    ``forward(a_s, a_t, key_mask)``: ``key_mask`` (``[batch, keys]`` bool) marks
    the real tokens of the side a function may attend over: the fusing target
    tokens for a positional function, the real source tokens otherwise.
    Element-wise functions ignore it.
    """

    name: ClassVar[str]
    positional: bool = True  # a_s arrives aligned to the target positions

    def __init__(self, r: int, heads: int = 1, query: str = "source") -> None:
        super().__init__()
        self.r = r

    def forward(self, a_s: torch.Tensor, a_t: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


@register_fusion("add")
class Add(FusionFunction):
    def forward(self, a_s, a_t, key_mask):
        return a_s + a_t


@register_fusion("mul")
class Mul(FusionFunction):
    def forward(self, a_s, a_t, key_mask):
        return a_s * a_t


@register_fusion("add_relu")
class AddRelu(FusionFunction):
    """The paper's default: ``relu(a_s) + relu(a_t)``."""

    def forward(self, a_s, a_t, key_mask):
        return F.relu(a_s) + F.relu(a_t)


@register_fusion("cross_attention")
class CrossAttention(FusionFunction):
    """Multi-head attention in the r-dim bottleneck; the only fusion that adds parameters.

    ``softmax(Q K^T / sqrt(r / heads)) V``, with one head the paper's module.

    ``query="source"`` (the paper: ``softmax(W_Q S (W_K T)^T / sqrt(r)) W_V T``):
        positional. At target position ``j`` the source token aligned with ``j``
        queries (``Q = W_Q a_s``) the fusing target tokens (``K = W_K a_t``,
        ``V = W_V a_t``); target padding is never attended. A zero query (no
        aligned source token, ``unaligned="fuse_zero"``) attends uniformly.
        Keys are only the *fusing* target tokens so that a decoder's prompt
        never sees its answer tokens (which generation does not have).
    ``query="target"``: each target token queries the whole source
        (``Q = W_Q a_t``, ``K, V`` from ``a_s``) with the source padding masked;
        source and target lengths may differ and no alignment is used.
    """

    def __init__(self, r: int, heads: int = 1, query: str = "source") -> None:
        super().__init__(r)
        if r % heads:
            raise ValueError(f"cross_attention: heads ({heads}) must divide the LoRA rank r ({r})")
        if query not in CROSS_ATTENTION_QUERIES:
            raise ValueError(f"cross_attention: query must be one of {list(CROSS_ATTENTION_QUERIES)}, got {query!r}")
        self.heads = heads
        self.query = query
        self.positional = query == "source"
        self.q = nn.Linear(r, r, bias=False)
        self.k = nn.Linear(r, r, bias=False)
        self.v = nn.Linear(r, r, bias=False)

    def forward(self, a_s, a_t, key_mask):
        queries, keys = (a_s, a_t) if self.positional else (a_t, a_s)
        b, n, r = queries.shape
        split = lambda x: x.view(b, -1, self.heads, r // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(queries)), split(self.k(keys)), split(self.v(keys))
        keep = key_mask.bool()
        # A row with no key at all would be all -inf (NaN); the caller keeps plain
        # LoRA in such a row, so let it attend anywhere to stay finite.
        keep = keep | ~keep.any(dim=-1, keepdim=True)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        return out.transpose(1, 2).reshape(b, n, r)

    def extra_repr(self) -> str:
        return f"r={self.r}, heads={self.heads}, query={self.query!r}"

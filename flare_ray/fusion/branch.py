"""The source branch of one forward: what each fusion site's LoRA ``A`` makes of the source, ``A(dropout(x_S))``.

peft's LoRA layer drops the target's input before ``A`` (its ``lora_dropout``, an ``nn.Dropout``); the source
branch drops the source's with the same p, independently for every site and of the target. Drawn site by site
inside the fusion hooks, one random number per element of every site's source input, those draws were most of
FLARE's overhead over LoRA on a CPU. :class:`SourceBranch` is made once per forward, before the target pass:

* On the CPU, for p up to :data:`SPARSE_MAX_P`, it draws which elements of every site's source input are dropped,
  for all sites in one call (:func:`draw_dropped`): the gaps between the dropped elements of a sequence of
  Bernoulli(p) draws are geometric, so about n·p draws give exactly the distribution of n. A site's branch is
  then ``(A x_S - A x_dropped) / (1 - p)`` (:func:`down_dropped`): one product with ``A`` and a correction over
  the dropped elements only, with no mask the size of the input. The draw happens outside every block, so a
  checkpointed block's re-run in backward reads the same elements, and the random state that checkpointing
  restores for the block's own dropouts is not moved by draws inside it.
* Elsewhere (a GPU, whose dropout kernel draws as it runs) and for larger p, the hook drops as before, with the
  site's own ``lora_dropout``.
* Where every site reads the same source input (FLARE-MT's projected latent translation, one tensor for all
  sites), it is computed once per forward, unless blocks are checkpointed: a checkpointed block re-runs in
  backward, and with reentrant checkpointing each block back-propagates on its own, so each must compute it.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from .sites import FusionSite
from .source import SourceStates

if TYPE_CHECKING:
    from .provider import SourceProvider

SPARSE_MAX_P = 0.25  # above it, drawing the gaps costs about as much as drawing every element


def draw_dropped(sizes: Sequence[int], p: float) -> list[torch.Tensor]:
    """For inputs of ``sizes`` elements, the flat indices of the dropped ones (ascending, int64, on the CPU):
    every element dropped with probability ``p``, independently, drawn for all inputs at once from the global
    random state as the gaps between dropped elements (geometric: about ``sum(sizes) * p`` draws)."""
    total = sum(sizes)
    chunk = math.ceil(
        total * p + 8 * math.sqrt(total * p * (1 - p)) + 64
    )  # 8 sd past the mean: a second chunk almost never
    found, last = [], -1.0
    while last < total:  # the first position past the end closes the sequence
        positions = torch.empty(chunk, dtype=torch.float64).geometric_(p).cumsum_(0).add_(last)
        found.append(positions)
        last = float(positions[-1])
    positions = torch.cat(found)
    positions = positions[: int(torch.searchsorted(positions, float(total)))].long()
    starts = [0, *itertools.accumulate(sizes)]
    cuts = torch.searchsorted(positions, torch.tensor(starts)).tolist()
    return [positions[cuts[i] : cuts[i + 1]] - starts[i] for i in range(len(sizes))]


def down_dropped(lora_a: nn.Linear, x: torch.Tensor, dropped: torch.Tensor, p: float) -> torch.Tensor:
    """``lora_a(dropout(x))`` where the elements at the flat indices ``dropped`` of ``x`` are dropped and the
    others scaled by ``1 / (1 - p)``, as ``nn.Dropout`` does: the product with all of ``x`` less the dropped
    elements' share, which touches the dropped elements only."""
    weight, width = lora_a.weight, x.shape[-1]
    flat = x.reshape(-1, width)
    index = dropped.int() if x.numel() < 2**31 else dropped  # int32 division: many times faster on a CPU
    rows, cols = (index // width).long(), (index % width).long()
    share = x.take(dropped).unsqueeze(-1) * weight.t()[cols]  # [dropped, r]
    correction = flat.new_zeros(flat.shape[0], weight.shape[0]).index_add(0, rows, share)
    out = (F.linear(flat, weight) - correction) * (1 / (1 - p))
    if lora_a.bias is not None:  # the bias is not dropped
        out = out + lora_a.bias
    return out.view(*x.shape[:-1], weight.shape[0])


def checkpointed(model: nn.Module) -> bool:
    """Whether the transformers ``model`` re-runs its blocks in backward (activation, formerly gradient,
    checkpointing; asked by the name this transformers version does not warn about)."""
    name = "is_activation_checkpointing" if hasattr(type(model), "is_activation_checkpointing") else None
    return bool(getattr(model, name or "is_gradient_checkpointing", False))


def _sparse_p(site: FusionSite, adapter: str, states: SourceStates) -> float | None:
    """The dropout p of ``site`` when its source branch draws ahead (:func:`draw_dropped`), else ``None``."""
    dropout, lora_a = site.layer.lora_dropout[adapter], site.layer.lora_A[adapter]
    if not (isinstance(dropout, nn.Dropout) and dropout.training and isinstance(lora_a, nn.Linear)):
        return None  # p = 0 (peft's nn.Identity), evaluation, or a LoRA variant's own A
    if states.attention_mask.device.type != "cpu" or not 0 < dropout.p <= SPARSE_MAX_P:
        return None
    return dropout.p


class SourceBranch:
    """The source branch of one forward (see the module): made by
    :meth:`~flare_ray.fusion.model.FlareModel.forward` before the target pass, read by the fusion hooks.

    ``draw``: draw the dropped elements ahead (training); ``once``: the one source input every site reads
    may be computed once (no block is checkpointed)."""

    def __init__(
        self,
        provider: SourceProvider,
        states: SourceStates,
        sites: Sequence[FusionSite],
        adapter: str,
        *,
        draw: bool,
        once: bool,
    ) -> None:
        self.provider, self.states, self.adapter = provider, states, adapter
        self.once = once and isinstance(states.hidden, torch.Tensor)
        self._shared: torch.Tensor | None = None
        self.p: dict[str, float] = {}
        self.dropped: dict[str, torch.Tensor] = {}
        if draw:
            self.p = {site.name: p for site in sites if (p := _sparse_p(site, adapter, states)) is not None}
            shape = tuple(states.attention_mask.shape)
            by_p: dict[float, list[FusionSite]] = {}
            for site in sites:
                if site.name in self.p:
                    by_p.setdefault(self.p[site.name], []).append(site)
            for p, group in by_p.items():  # one draw for the sites of each p (peft: one p for all)
                sizes = [math.prod(shape) * site.layer.in_features for site in group]
                self.dropped.update(zip((site.name for site in group), draw_dropped(sizes, p)))

    def site_input(self, site: FusionSite) -> torch.Tensor:
        """What ``site``'s ``A`` reads (``[batch, source_len, in_features]``), from the model's provider."""
        if not self.once:
            return self.provider.site_input(self.states, site)
        if self._shared is None:
            self._shared = self.provider.site_input(self.states, site)
        return self._shared

    def down(self, site: FusionSite) -> torch.Tensor:
        """``A(dropout(x_S))`` of ``site`` (``[batch, source_len, r]``), in ``A``'s precision."""
        lora_a = site.layer.lora_A[self.adapter]
        x_s = self.site_input(site).to(lora_a.weight.dtype)
        dropped = self.dropped.get(site.name)
        if dropped is None:
            return lora_a(site.layer.lora_dropout[self.adapter](x_s))
        expected = math.prod(self.states.attention_mask.shape) * site.layer.in_features
        if x_s.numel() != expected:
            raise RuntimeError(
                f"FLARE: {site.name} reads a source input of shape {tuple(x_s.shape)}, but its dropout was drawn "
                f"for {tuple(self.states.attention_mask.shape)} x {site.layer.in_features} features"
            )
        return down_dropped(lora_a, x_s, dropped, self.p[site.name])

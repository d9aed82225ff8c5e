"""FLARE-MT: latent translations from the encoder of an MT model (M2M100/NLLB).

The MT encoder reads the *target* text and its final hidden states serve as the
source representation of every fused layer, after a trainable projection to the
model width. :class:`MTSource` is the source provider (see
:mod:`~flare_ray.fusion.provider`) holding both; there is no source pass
through the base model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from .sites import FusionSite
from .source import SourceStates, _eval_mode

if TYPE_CHECKING:
    from .provider import SourceBatch


def load_mt_encoder(name_or_path: str, **from_pretrained_kwargs) -> nn.Module:
    """The encoder of an MT model, e.g. ``facebook/nllb-200-distilled-600M`` (frozen)."""
    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(name_or_path, **from_pretrained_kwargs)
    encoder = model.get_encoder()
    encoder.config = model.config  # the encoder of M2M100 shares its config; keep d_model at hand
    return encoder.requires_grad_(False).eval()


@torch.no_grad()
def run_mt_encoder(encoder: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SourceStates:
    """Latent translation ``[batch, mt_len, d_mt]`` of the target text."""
    with _eval_mode(encoder):
        hidden = encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return SourceStates(hidden=hidden, attention_mask=attention_mask)


class MTSource:
    """Source provider: the frozen MT ``encoder`` on ``mt_input_ids`` and its ``projection``
    (trainable, ``d_mt -> width``), applied where the sites read the latent translation.

    The FLARE model registers both modules (its weights are saved as ``mt_projection.*``).
    """

    def __init__(self, encoder: nn.Module, sites: Sequence[FusionSite], width: int) -> None:
        for site in sites:
            if site.layer.in_features != width:
                raise ValueError(
                    f"FLARE-MT: fused module {site.name} takes {site.layer.in_features} features, "
                    f"but latent translations are projected to the model width {width}"
                )
        self.encoder = encoder.requires_grad_(False)
        self.projection = nn.Linear(encoder.config.d_model, width)

    @classmethod
    def for_model(
        cls, encoder: nn.Module | None, name_or_path: str | None, sites: Sequence[FusionSite], width: int
    ) -> MTSource | None:
        """The provider for ``encoder``, else for the one loaded from ``name_or_path``; ``None`` for neither."""
        if encoder is None and name_or_path is not None:
            encoder = load_mt_encoder(name_or_path)
        return None if encoder is None else cls(encoder, sites, width)

    def states(self, batch: SourceBatch) -> SourceStates | None:
        inputs = batch.inputs(mt=True)
        return None if inputs is None else run_mt_encoder(self.encoder, *inputs)

    def site_input(self, states: SourceStates, site: FusionSite) -> torch.Tensor:
        # Called from the fusion hooks (flare_ray.fusion.branch): once per forward, or in every hook when blocks
        # are checkpointed, so that each re-run block projects again in backward.
        return self.projection(states.for_site(site.name).to(self.projection.weight.dtype))

"""FLARE-MT: latent translations from the encoder of an MT model (M2M100/NLLB).

The MT encoder reads the *target* text and its final hidden states serve as the
source representation of every fused layer (after a trainable projection to the
model width, owned by :class:`~flare_ray.fusion.model.FlareModel`). There is no
source pass through the base model.
"""

from __future__ import annotations

import torch
from torch import nn

from .source import SourceStates, _eval_mode


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

"""The source side of a batch, and the source providers that turn it into :class:`SourceStates`.

:class:`~flare_ray.fusion.model.FlareModel` takes the source in one of three
forms (:class:`SourceBatch`) and asks its source provider, chosen once when the
model is built, for the representations: the base model's own source pass
(:class:`~flare_ray.fusion.source.SourcePass`) or, for FLARE-MT, the MT encoder
and its projection (:class:`~flare_ray.fusion.mt.MTSource`). The provider also
says what each fusion site's LoRA ``A`` reads from them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Protocol

import torch

from .alignment import mask_or_ones
from .sites import FusionSite
from .source import SourceStates


@dataclass(frozen=True)
class SourceBatch:
    """The source keyword arguments of one FLARE call (all optional; see :class:`FlareModel`)."""

    source_input_ids: torch.Tensor | None = None
    source_attention_mask: torch.Tensor | None = None
    source_position_ids: torch.Tensor | None = None  # a flattened (padding-free) source, without a mask
    source_states: SourceStates | None = None
    mt_input_ids: torch.Tensor | None = None
    mt_attention_mask: torch.Tensor | None = None

    @classmethod
    def pop_from(cls, kwargs: dict) -> "SourceBatch":
        """The source keyword arguments, taken out of a call's ``kwargs`` (the rest goes to the model)."""
        return cls(**{f.name: kwargs.pop(f.name, None) for f in fields(cls)})

    def states(self, provider: SourceProvider) -> SourceStates | None:
        """The given ``source_states``, else what ``provider`` makes of the inputs; ``None`` for no source."""
        if self.source_states is None:
            return provider.states(self)
        if any(getattr(self, f.name) is not None for f in fields(self) if f.name != "source_states"):
            raise ValueError("give either source_states or source inputs, not both")
        return self.source_states

    def inputs(self, mt: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ``(input_ids, attention_mask)`` a provider reads, ``mt_*`` for FLARE-MT and ``source_*``
        otherwise; ``None`` without them. Inputs of the other kind are refused (wrong model for the batch)."""
        if mt and self.source_input_ids is not None:
            raise ValueError("FLARE-MT takes mt_input_ids (the target text in MT tokenization), not source_input_ids")
        if not mt and self.mt_input_ids is not None:
            raise ValueError("mt_input_ids given, but this FLARE model has no MT encoder (FlareConfig.mt_encoder)")
        ids, mask = (
            (self.mt_input_ids, self.mt_attention_mask) if mt else (self.source_input_ids, self.source_attention_mask)
        )
        return None if ids is None else (ids, mask_or_ones(ids, mask))


class SourceProvider(Protocol):
    """Where a FLARE model's source representations come from (chosen once, when the model is built)."""

    def states(self, batch: SourceBatch) -> SourceStates | None:
        """The source representations of the batch's inputs; ``None`` when it carries none."""
        ...

    def site_input(self, states: SourceStates, site: FusionSite) -> torch.Tensor:
        """What ``site``'s LoRA ``A`` reads in place of the target (``[batch, source_len, in_features]``)."""
        ...

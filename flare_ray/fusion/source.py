"""The source pass: per-site source-language representations from the frozen base model.

The source pass runs the base model's backbone (no task head, no vocabulary
logits) on the English input with every adapter disabled, without gradients and
with dropout off, and keeps, for each fusion site, the representation chosen by
:class:`~flare_ray.fusion.config.SourceRepresentation`. It stops after the last
block that any site needs.

:class:`SourceStates` is also what a caller hands to the FLARE forward directly
(from a cache, or latent translations from an MT encoder), and
:class:`SourcePass` is the source provider (see :mod:`~flare_ray.fusion.provider`)
that runs the source pass for a FLARE model without an MT encoder.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import torch
from peft import PeftModel
from torch import nn

from .config import SourceRepresentation
from .sites import ArchitectureFamily, FusionPlan, FusionSite, encoder_of

if TYPE_CHECKING:
    from .provider import SourceBatch


@dataclass
class SourceStates:
    """Source representations for one batch.

    Args:
        hidden: one tensor ``[batch, source_len, width]`` per fused module name,
            or a single tensor used by every fused module (FLARE-MT's latent
            translation).
        attention_mask: ``[batch, source_len]``, 1 for real source tokens. Real
            tokens must be contiguous (left or right padding).
        position_ids: a flattened source (padding-free batches): ``[1, total]``, restarting at 0 at each
            sequence's first token (``attention_mask`` then all ones); ``None``: padded rows.
    """

    hidden: dict[str, torch.Tensor] | torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor | None = None

    def for_site(self, name: str) -> torch.Tensor:
        if isinstance(self.hidden, torch.Tensor):
            return self.hidden
        try:
            return self.hidden[name]
        except KeyError:
            raise KeyError(f"SourceStates has no representation for fused module {name!r}") from None

    def to(self, device: torch.device | str) -> "SourceStates":
        move = lambda t: t.to(device)  # noqa: E731
        hidden = (
            move(self.hidden) if isinstance(self.hidden, torch.Tensor) else {k: move(v) for k, v in self.hidden.items()}
        )
        positions = None if self.position_ids is None else move(self.position_ids)
        return SourceStates(hidden, move(self.attention_mask), positions)


class _SourcePassDone(Exception):
    """Raised by a hook once the last needed block has run."""


@contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


@contextmanager
def _adapters_disabled(peft_model: PeftModel) -> Iterator[None]:
    """peft's ``disable_adapter``, keeping every ``requires_grad`` flag as it was
    (leaving it re-enables task heads in ``modules_to_save``, even of a frozen model)."""
    flags = [(p, p.requires_grad) for p in peft_model.parameters()]
    try:
        with peft_model.disable_adapter():
            yield
    finally:
        for param, flag in flags:
            param.requires_grad_(flag)


def _first_tensor(value):
    return value if isinstance(value, torch.Tensor) else value[0]


def _backbone(model: nn.Module, family: ArchitectureFamily) -> nn.Module:
    """The part of the transformers model that produces hidden states, without any head.

    Encoder-decoders (mT5 as LM or with a classification or span head) fuse in
    the encoder, so the source pass needs the encoder only (no decoder, no head).
    """
    if family is ArchitectureFamily.ENCODER_DECODER:
        return encoder_of(model)
    return model.base_model  # transformers: the model under ``base_model_prefix`` (e.g. LlamaModel, XLMRobertaModel)


@torch.no_grad()
def run_source_pass(
    peft_model: PeftModel,
    plan: FusionPlan,
    representation: SourceRepresentation,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor | None = None,
) -> SourceStates:
    """Run the frozen base model on the source batch and collect each site's representation.

    ``position_ids``: a flattened (padding-free) decoder batch's, ``[1, total]``; the pass then runs without
    an attention mask, which transformers reads as sequences packed in one row (a block-diagonal causal mask,
    or flash attention's varlen kernels)."""
    model = peft_model.get_base_model()
    by_block: dict[int, torch.Tensor] = {}
    by_site: dict[str, torch.Tensor] = {}
    last_block = max(plan.fused_blocks)
    handles = []

    def keep_block_output(index):
        def hook(_module, _args, output):
            by_block[index] = _first_tensor(output)

        return hook

    def stop(_module, _args, _output):
        raise _SourcePassDone

    def keep_block_input(index):
        def hook(_module, args, kwargs):
            by_block[index] = args[0] if args else kwargs["hidden_states"]

        return hook

    def keep_module_input(name):
        def hook(_module, args, kwargs):
            by_site[name] = args[0] if args else kwargs["x"]

        return hook

    try:
        for index in plan.fused_blocks:
            block = plan.blocks[index]
            if representation is SourceRepresentation.BLOCK_INPUT:
                handles.append(block.register_forward_pre_hook(keep_block_input(index), with_kwargs=True))
            if representation is SourceRepresentation.NEXT_BLOCK_OUTPUT:
                handles.append(block.register_forward_hook(keep_block_output(index)))
        handles.append(plan.blocks[last_block].register_forward_hook(stop))  # after the keeping hooks
        if representation is SourceRepresentation.MODULE_INPUT:
            for site in plan.sites:
                handles.append(site.layer.register_forward_pre_hook(keep_module_input(site.name), with_kwargs=True))

        kwargs = {}
        if plan.family is ArchitectureFamily.DECODER:
            # Position ids follow the mask, as in generation, so left padding does not move the prompt.
            kwargs = {"use_cache": False, "position_ids": (attention_mask.long().cumsum(-1) - 1).clamp(min=0)}
        mask = attention_mask
        if position_ids is not None:  # flattened: the sequences packed in one row, read without a mask
            kwargs["position_ids"], mask = position_ids, None
        with _adapters_disabled(peft_model), _eval_mode(model):
            try:
                _backbone(model, plan.family)(input_ids=input_ids, attention_mask=mask, **kwargs)
            except _SourcePassDone:
                pass
    finally:
        for handle in handles:
            handle.remove()

    if representation is SourceRepresentation.MODULE_INPUT:
        hidden = by_site
    else:
        hidden = {site.name: by_block[site.block] for site in plan.sites}
    return SourceStates(hidden=hidden, attention_mask=attention_mask, position_ids=position_ids)


class SourcePass:
    """Source provider: the frozen base model's own source pass on ``source_input_ids``."""

    def __init__(self, peft_model: PeftModel, plan: FusionPlan, representation: SourceRepresentation) -> None:
        self.peft_model, self.plan, self.representation = peft_model, plan, representation

    def states(self, batch: SourceBatch) -> SourceStates | None:
        inputs = batch.inputs(mt=False)
        if inputs is None:
            return None
        positions = batch.source_position_ids
        return run_source_pass(self.peft_model, self.plan, self.representation, *inputs, position_ids=positions)

    def site_input(self, states: SourceStates, site: FusionSite) -> torch.Tensor:
        return states.for_site(site.name)

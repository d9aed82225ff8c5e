"""The FLARE model: a peft LoRA model whose fused modules combine source and
target representations in the LoRA bottleneck.

Nothing of peft or transformers is patched. peft's LoRA layer computes
``base(x) + B(A(dropout(x))) * scaling``; FLARE registers a forward pre-hook on
``B`` of each fusion site that replaces its input ``a_t = A(dropout(x_T))`` with
``f(A(dropout(x_S)), a_t)``. The hook reads the source representations from the
model's *active fusion context*, which :meth:`FlareModel.forward` sets before
the target pass and, when gradients are on, leaves in place until the next
call, so that gradient checkpointing, which re-runs the blocks during backward,
fuses exactly as the forward did and gradients reach ``A`` through the source
branch too. The source representations come from the model's source provider
(:mod:`~flare_ray.fusion.provider`): the source pass, or FLARE-MT's MT encoder.

FLARE must never train as plain LoRA without anyone noticing (the authors'
public code did, under gradient checkpointing): :meth:`FlareModel.require_fusion`
counts, per fusion site, the hook calls that fused and raises
:class:`FusionNotAppliedError` naming every site that never did.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Iterator

import torch
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from safetensors.torch import load_file, save_file
from torch import nn

from .alignment import Alignment, align, mask_or_ones, step_alignment
from .branch import SourceBranch, checkpointed
from .cache import CachedSource, SourceCache
from .config import FlareConfig
from .functions import FUSION_FUNCTIONS, FusionFunction
from .mt import MTSource
from .provider import SourceBatch, SourceProvider
from .sites import ArchitectureFamily, FusionSite, plan_fusion
from .source import SourcePass, SourceStates

WEIGHTS_NAME = "flare_model.safetensors"
_FLARE_PREFIXES = ("fusions.", "mt_projection.")


@dataclass
class FusionContext:
    """What the fusion hooks read during one target pass."""

    states: SourceStates
    alignment: Alignment
    branch: SourceBranch | None = None  # made by forward, before the target pass; else on first use

    def for_step(self, total: int, new: int) -> FusionContext:
        """The context of one decoding step (positions ``[total - new, total)``) of this prompt's context."""
        return FusionContext(self.states, step_alignment(self.alignment, total, new))


class FusionNotAppliedError(RuntimeError):
    """Raised by :meth:`FlareModel.require_fusion` when fusion sites never fused."""

    def __init__(self, sites: list[str], total: int) -> None:
        self.sites, self.total = sites, total
        shown = ", ".join(sites[:8]) + (f", ... ({len(sites) - 8} more)" if len(sites) > 8 else "")
        super().__init__(
            f"FLARE: {len(sites)} of {total} fusion sites never fused, so they trained as plain LoRA: {shown}. "
            "Check that the batch carries the source (source_input_ids, source_states or mt_input_ids) and that "
            "fusion_disabled() is not active; that the model's attention path calls the adapted modules (an "
            "attention implementation or fused kernel that reads the base weights directly bypasses LoRA); and, "
            "with gradient checkpointing, that the checkpointed blocks run through those modules."
        )

    def __reduce__(self):  # picklable (Ray ships exceptions between processes)
        return type(self), (self.sites, self.total)


def default_task_type(model: nn.Module) -> TaskType:
    """peft's task type for a transformers model: its task head if it has one, else how it generates.

    The head decides first: mT5 with a classification or span head
    (``MT5ForSequenceClassification``, ``MT5ForQuestionAnswering``) is an
    encoder-decoder but not a sequence-to-sequence LM.
    """
    name = type(model).__name__
    if name.endswith("ForQuestionAnswering"):
        return TaskType.QUESTION_ANS
    if name.endswith("ForTokenClassification"):
        return TaskType.TOKEN_CLS
    if name.endswith("ForSequenceClassification"):
        return TaskType.SEQ_CLS
    family = ArchitectureFamily.of(model)
    if family is ArchitectureFamily.ENCODER_DECODER:
        return TaskType.SEQ_2_SEQ_LM
    if family is ArchitectureFamily.DECODER:
        return TaskType.CAUSAL_LM
    return TaskType.SEQ_CLS


# Task heads peft's task types do not know: peft trains ``classifier``/``score`` (SEQ_CLS) and
# ``qa_outputs`` (QUESTION_ANS) as ``modules_to_save``; the T5 family names its head otherwise.
_HEADS_PEFT_MISSES = ("classification_head",)  # MT5ForSequenceClassification, T5, BART


def untrained_task_heads(model: nn.Module) -> list[str]:
    """Task head modules of ``model`` that peft's task type would leave frozen at their random
    initialisation: name them in ``LoraConfig(modules_to_save=...)`` (plain LoRA too)."""
    return [name for name in _HEADS_PEFT_MISSES if isinstance(getattr(model, name, None), nn.Module)]


def _site_key(site: FusionSite) -> str:
    return site.name.replace(".", "__")


class FlareModel(nn.Module):
    """A peft LoRA model with FLARE fusion; built by :func:`get_flare_model`.

    Call it like the wrapped model, plus the source side, one of:

    * ``source_input_ids`` / ``source_attention_mask``: the English input; the
      frozen base model runs on it (the source pass);
    * ``source_states``: precomputed :class:`SourceStates` (per-site
      representations, or for FLARE-MT the MT encoder's latent translation);
    * ``mt_input_ids`` / ``mt_attention_mask`` (FLARE-MT): the *target* text in
      the MT model's tokenization.

    Without any of them (or inside :meth:`fusion_disabled`) it is exactly the
    plain peft LoRA model. ``fusion_mask`` (``[batch, target_len]``) limits
    which target positions fuse; by default all real tokens, and for decoders
    trained with ``labels`` only the prompt (positions whose label is -100), so
    training matches generation (see :meth:`generate`).
    """

    def __init__(self, peft_model: PeftModel, config: FlareConfig, mt_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.peft_model = peft_model
        self.config = config
        self.adapter_name = peft_model.active_adapter
        self.fusion_enabled = True
        base = peft_model.get_base_model()
        self.plan = plan_fusion(base, config)
        self.family = self.plan.family
        fusion_cls = FUSION_FUNCTIONS[config.fusion]
        self.fusions = nn.ModuleDict(
            {
                _site_key(site): fusion_cls(
                    site.layer.r[self.adapter_name],
                    heads=config.cross_attention_heads,
                    query=config.cross_attention_query,
                )
                for site in self.plan.sites
            }
        )
        width = base.config.get_text_config().hidden_size
        mt = MTSource.for_model(mt_encoder, config.mt_encoder, self.plan.sites, width)
        # Registered here, so that FLARE-MT's weights are this model's (saved as ``mt_projection.*``).
        self.mt_encoder = None if mt is None else mt.encoder
        self.mt_projection = None if mt is None else mt.projection
        self.source: SourceProvider = mt or SourcePass(peft_model, self.plan, config.source_representation)
        # New fusion parameters live where the adapter lives.
        device = next(p.device for p in base.parameters())
        for module in (self.fusions, self.mt_projection):
            if module is not None:
                module.to(device)
        self._active: FusionContext | None = None
        self._fusion_counts: dict[str, int] | None = None  # set by require_fusion()
        self._hooks = [
            site.layer.lora_B[self.adapter_name].register_forward_pre_hook(partial(self._fuse, site))
            for site in self.plan.sites
        ]

    # -- the fusion itself ---------------------------------------------------
    def _fuse(self, site: FusionSite, _lora_b: nn.Module, args: tuple[torch.Tensor, ...]):
        context = self._active
        if context is None:
            return None
        (a_t,) = args
        if a_t.shape[:2] != context.alignment.fuse.shape:
            raise RuntimeError(
                f"FLARE: {site.name} sees a target of shape {tuple(a_t.shape[:2])} but the fusion context was "
                f"built for {tuple(context.alignment.fuse.shape)}; call the FlareModel, not the wrapped model"
            )
        if context.branch is None:  # generation: nothing drawn ahead
            context.branch = self._source_branch(context.states, draw=False)
        a_s = context.branch.down(site).to(a_t.dtype)
        fusion: FusionFunction = self.fusions[_site_key(site)]
        alignment = context.alignment
        if fusion.positional:
            # Keys (source-query cross-attention) are the fusing target tokens.
            fused = fusion(alignment.gather(a_s), a_t, alignment.rows)
            where = alignment.rows if self.config.unaligned == "fuse_zero" else alignment.fuse
        else:
            fused = fusion(a_s, a_t, alignment.source_mask)
            where = alignment.rows
        if self._fusion_counts is not None:
            self._fusion_counts[site.name] += 1
        return (torch.where(where.unsqueeze(-1), fused, a_t),)

    # -- source side ---------------------------------------------------------
    def _source_branch(self, states: SourceStates, draw: bool) -> SourceBranch:
        """The source branch of one forward (:mod:`~flare_ray.fusion.branch`): the source dropout drawn ahead
        where ``draw``, FLARE-MT's projection once unless checkpointed blocks must each compute it again."""
        once = not isinstance(states.hidden, torch.Tensor) or not (
            self.training and torch.is_grad_enabled() and checkpointed(self.peft_model.get_base_model())
        )
        return SourceBranch(self.source, states, self.plan.sites, self.adapter_name, draw=draw, once=once)

    def source_states(
        self,
        source_input_ids: torch.Tensor | None = None,
        source_attention_mask: torch.Tensor | None = None,
        mt_input_ids: torch.Tensor | None = None,
        mt_attention_mask: torch.Tensor | None = None,
    ) -> SourceStates | None:
        """The source representations for a batch: the source pass, or the MT encoder for FLARE-MT."""
        batch = SourceBatch(
            source_input_ids, source_attention_mask, mt_input_ids=mt_input_ids, mt_attention_mask=mt_attention_mask
        )
        return self.source.states(batch)

    def _context(
        self,
        source: SourceBatch,
        input_ids: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
        fusion_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> FusionContext | None:
        """What the target pass fuses: ``None`` without a source or with fusion disabled. A decoder's
        ``position_ids`` without an ``attention_mask``: a flattened (padding-free) target, its sequences
        aligned one by one with the source's (:func:`~flare_ray.fusion.alignment.align`)."""
        if not self.fusion_enabled or (not self.training and not self.config.source_at_inference):
            return None
        states = source.states(self.source)
        if states is None:
            return None
        target_mask = mask_or_ones(input_ids, attention_mask)
        flat = self.family is ArchitectureFamily.DECODER and attention_mask is None and position_ids is not None
        positions = position_ids if flat else None
        if flat and self.config.fusion == "cross_attention":  # its attention would reach across the sequences
            raise ValueError("FLARE: cross_attention fusion needs padded batches, not flattened ones (padding_free)")
        if fusion_mask is None:
            fusion_mask = target_mask
            if self.family is ArchitectureFamily.DECODER and labels is not None:
                fusion_mask = fusion_mask.bool() & (labels == -100)  # the prompt, not the answer
        if self.training and self.config.fusion_probability < 1:  # these instances fuse, the others are plain LoRA
            rows = target_mask.shape[0] if positions is None else int((positions == 0).sum())  # a draw a sequence
            chosen = torch.rand(rows, device=target_mask.device) < self.config.fusion_probability
            chosen = chosen.unsqueeze(-1) if positions is None else chosen[(positions == 0).long().cumsum(-1) - 1]
            fusion_mask = fusion_mask.bool() & chosen
        flat_sides = {"target_positions": positions, "source_positions": states.position_ids}
        return FusionContext(states, align(target_mask, fusion_mask, states.attention_mask, **flat_sides))

    def _decoding_step(self, prompt: FusionContext, _module: nn.Module, _args: tuple, kwargs: dict) -> None:
        """Forward pre-hook of a decoder in :meth:`generate`: each step fuses only its prompt positions."""
        self._active = prompt.for_step(*step_span(kwargs))

    # -- the forward ---------------------------------------------------------
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        fusion_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ):
        """The target pass, fusing the source given as :class:`SourceBatch`'s keyword arguments
        (``source_input_ids``/``source_attention_mask``, ``source_states``, or FLARE-MT's
        ``mt_input_ids``/``mt_attention_mask``); the other ``kwargs`` go to the peft model."""
        source = SourceBatch.pop_from(kwargs)
        if attention_mask is None and kwargs.get("position_ids") is not None:  # flattened: read as packed, not cached
            kwargs.setdefault("use_cache", False)
        self._active = self._context(
            source, input_ids, attention_mask, fusion_mask, kwargs.get("labels"), kwargs.get("position_ids")
        )
        if self._active is not None:  # its dropout drawn here, outside every (checkpointed) block
            self._active.branch = self._source_branch(self._active.states, draw=self.training)
        try:
            return self.peft_model(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            # With gradients on, backward may re-run checkpointed blocks, which must fuse exactly as
            # this forward did: the context stays until the next call. Without, nothing can need it.
            if not torch.is_grad_enabled():
                self._active = None

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """Generate with fusion.

        Encoder-decoder: the encoder fuses (once, as in training); the decoder is plain LoRA.
        Decoder: the prompt tokens fuse (at prefill); generated tokens are plain LoRA,
        as the answer tokens are in training. This holds with or without the KV cache.
        """
        attention_mask = mask_or_ones(input_ids, attention_mask)
        source = SourceBatch.pop_from(generate_kwargs)  # the same source keywords as forward
        context = self._context(source, input_ids, attention_mask)
        handle = None
        if context is not None and self.family is ArchitectureFamily.DECODER:
            hook = partial(self._decoding_step, context)
            handle = self.peft_model.get_base_model().register_forward_pre_hook(hook, with_kwargs=True)
        self._active = context
        try:
            return self.peft_model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        finally:
            if handle is not None:
                handle.remove()
            self._active = None

    def cache_source(self, cache: SourceCache | None) -> None:
        """From now on, read the source representations through ``cache`` (:mod:`~flare_ray.fusion.cache`:
        each example's computed once, then read back); ``None``: compute them every call again."""
        inner = self.source.inner if isinstance(self.source, CachedSource) else self.source
        self.source = inner if cache is None else CachedSource(inner, cache, mt=isinstance(inner, MTSource))

    @contextmanager
    def fusion_disabled(self) -> Iterator[None]:
        """Run as the plain peft LoRA model (fusion off), e.g. for a baseline on the same weights."""
        previous, self.fusion_enabled = self.fusion_enabled, False
        try:
            yield
        finally:
            self.fusion_enabled = previous

    @contextmanager
    def require_fusion(self) -> Iterator[dict[str, int]]:
        """Fail loudly unless every fusion site fuses inside the block.

        For a training step::

            with model.require_fusion():
                model(**batch).loss.backward()

        Counts, per site, the calls of its fusion hook that had a source to fuse
        (gradient checkpointing re-runs blocks during backward, so a site may
        count twice) and yields the counts (site name -> calls). On leaving the
        block, raises :class:`FusionNotAppliedError` naming the sites that never
        fused. Nothing is counted outside such a block (the hook checks for
        ``None``). Blocks may nest; the outer one also counts the inner calls.
        """
        counts = dict.fromkeys((site.name for site in self.plan.sites), 0)
        outer, self._fusion_counts = self._fusion_counts, counts
        try:
            yield counts
        finally:
            self._fusion_counts = outer
            if outer is not None:
                for name, n in counts.items():
                    outer[name] += n
        missing = [name for name, n in counts.items() if n == 0]
        if missing:
            raise FusionNotAppliedError(missing, total=len(counts))

    # -- parameters, saving, loading ----------------------------------------
    def flare_state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters FLARE adds beyond peft's adapter (cross-attention, MT projection)."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(_FLARE_PREFIXES)}

    def save_pretrained(self, directory: str | Path) -> Path:
        """peft's adapter files, ``flare_config.json`` and the extra FLARE weights (safetensors)."""
        directory = Path(directory)
        self.peft_model.save_pretrained(directory)
        self.config.save(directory)
        extra = {k: v.detach().contiguous() for k, v in self.flare_state_dict().items()}
        if extra:
            save_file(extra, directory / WEIGHTS_NAME)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        directory: str | Path,
        *,
        is_trainable: bool = False,
        mt_encoder: nn.Module | None = None,
    ) -> "FlareModel":
        """Load a saved FLARE adapter onto ``model`` (the same base model it was trained on)."""
        directory = Path(directory)
        config = FlareConfig.load(directory)
        peft_model = PeftModel.from_pretrained(model, directory, is_trainable=is_trainable)
        flare = cls(peft_model, config, mt_encoder=mt_encoder)
        expected = set(flare.flare_state_dict())
        if expected:
            path = directory / WEIGHTS_NAME
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: missing; this FLARE config needs weights for {sorted(expected)[:3]}..."
                )
            weights = load_file(path)
            if set(weights) != expected:
                raise ValueError(
                    f"{path}: holds {sorted(set(weights) ^ expected)[:5]} that do not match this FLARE model"
                )
            flare.load_state_dict(weights, strict=False)
        if is_trainable:
            for key, param in flare.named_parameters():
                if key.startswith(_FLARE_PREFIXES):
                    param.requires_grad_(True)
        else:
            flare.requires_grad_(False)  # peft leaves modules_to_save (task heads) trainable
        return flare

    def print_trainable_parameters(self) -> None:
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        print(f"trainable params: {trainable:,} || all params: {total:,} || trainable%: {100 * trainable / total:.4f}")


def get_flare_model(
    model: nn.Module,
    config: FlareConfig | None = None,
    lora_config: LoraConfig | None = None,
    *,
    mt_encoder: nn.Module | None = None,
) -> FlareModel:
    """Add a FLARE adapter to a transformers model.

    ``lora_config`` is peft's own (rank, alpha, dropout, target modules, ...);
    by default r=8, alpha=16 on peft's default targets for the architecture
    (attention query and value) with the task type inferred from the model.
    Task heads peft's task type does not know (mT5's ``classification_head``)
    are added to ``modules_to_save`` so that they train.
    For QLoRA, load the model in 4-bit and call ``peft.prepare_model_for_kbit_training``
    first, exactly as for plain LoRA.
    """
    config = config or FlareConfig()
    if lora_config is None:
        lora_config = LoraConfig(r=8, lora_alpha=16, task_type=default_task_type(model))
    saved = list(lora_config.modules_to_save or [])
    heads = [h for h in untrained_task_heads(model) if h not in saved]
    if heads:  # a copy: the caller's config stays as it was
        lora_config = copy.copy(lora_config)
        lora_config.modules_to_save = saved + heads
    return FlareModel(get_peft_model(model, lora_config), config, mt_encoder=mt_encoder)


def step_span(kwargs: dict[str, Any]) -> tuple[int, int]:
    """``(total, new)`` of a decoding step from the base model's keyword arguments: the step sees
    positions ``[total - new, total)`` of the sequence so far."""
    step_input = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else kwargs["inputs_embeds"]
    new = step_input.shape[1]
    if kwargs.get("attention_mask") is not None:
        return kwargs["attention_mask"].shape[1], new
    # No padding anywhere: generate drops the all-ones mask. transformers 5 passes the KV cache
    # as ``cache`` (``past_key_values`` before).
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    return new + (cache.get_seq_length() if cache is not None else 0), new

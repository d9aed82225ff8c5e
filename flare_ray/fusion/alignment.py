"""Token alignment of source and target positions.

FLARE fuses token-wise (Sec. 3.2): the k-th real target token is fused with the
k-th real source token, whatever the padding. This one rule covers every
architecture:

* encoders (XLM-R) and the mT5 encoder pad on the right: position ``j`` of the
  target meets position ``j`` of the source;
* decoders (Llama, Gemma 2) left-pad their prompts: the k-th prompt token meets
  the k-th source prompt token, counted from each side's first real token
  (exactly the tokens that share a rotary position id).

A target position fuses only where ``fusion_mask`` is set (by default its real
tokens; for decoders, the prompt tokens; ``rows``); everywhere else the module
is plain LoRA. A fusing position with no aligned real source token (the target
is longer; ``rows & ~fuse``) sees a zero source vector or stays plain LoRA, as
``FlareConfig.unaligned`` says. Source pad positions are never read, so neither
their content nor their number changes the output. A row whose source has no
real token at all does not fuse. Cross-attention with the source as query uses
the same alignment for its queries; with the target as query it needs none and
masks source padding as attention keys.

In generation a decoder fuses its prompt only: :func:`step_alignment` gives each
decoding step the part of the prompt's alignment that the step sees.

Padding-free batches (``training.padding_free``, decoders; transformers'
``DataCollatorWithFlattening``) hold a side as one row ``[1, total]`` of its
sequences end to end, position ids restarting at 0 at each sequence's first
token and no attention mask. The rule is the same: the k-th token of the i-th
target sequence meets the k-th real token of the i-th source sequence, found
from the position ids of a flattened side and from the mask of a padded one
(FLARE-MT's MT encoder input and rows read back from the source cache stay
padded), so a flattened target meets either a flattened or a padded source. The
alignment's ``index`` then points into the source flattened over its rows
(``flat``), and a flattened batch fuses exactly what its padded form fuses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Alignment:
    index: torch.Tensor  # [batch, target_len]: source position aligned with each target position
    fuse: torch.Tensor  # [batch, target_len] bool: fusing positions with an aligned real source token
    rows: torch.Tensor  # [batch, target_len] bool: target positions that fuse at all (any function)
    source_mask: torch.Tensor  # [batch, source_len] bool
    flat: bool = False  # index points into the source's rows end to end (a flattened target: batch 1)

    def gather(self, a_s: torch.Tensor) -> torch.Tensor:
        """``a_s`` ``[batch, source_len, r]`` -> aligned ``[batch, target_len, r]``, zero where
        no real source token is aligned (so that ``unaligned="fuse_zero"`` fuses ``f(0, a_t)``)."""
        if self.flat:
            a_s = a_s.reshape(1, -1, a_s.shape[-1])
        aligned = a_s.gather(1, self.index.unsqueeze(-1).expand(-1, -1, a_s.shape[-1]))
        return aligned.masked_fill(~self.fuse.unsqueeze(-1), 0)


def align(
    target_mask: torch.Tensor,
    fusion_mask: torch.Tensor,
    source_mask: torch.Tensor,
    *,
    target_positions: torch.Tensor | None = None,
    source_positions: torch.Tensor | None = None,
) -> Alignment:
    """The alignment of a target batch with its source batch (see the module docstring).

    ``target_positions`` / ``source_positions``: the position ids ``[1, total]`` of a flattened side (its
    mask then all ones); ``None``: the side is padded, its rows the sequences."""
    if target_positions is not None or source_positions is not None:
        return _align_flat(target_mask, fusion_mask, source_mask, target_positions, source_positions)
    target_mask, fusion_mask, source_mask = target_mask.bool(), fusion_mask.bool(), source_mask.bool()
    if target_mask.shape[0] != source_mask.shape[0]:
        raise ValueError(
            f"FLARE: target batch has {target_mask.shape[0]} rows but the source batch has {source_mask.shape[0]}"
        )
    k_target = target_mask.long().cumsum(-1) - 1  # content index of each target token
    first_source = source_mask.long().argmax(-1, keepdim=True)  # first real source token
    n_source = source_mask.sum(-1, keepdim=True)
    rows = fusion_mask & target_mask & (n_source > 0)
    fuse = rows & (k_target < n_source)
    index = (first_source + k_target.clamp(min=0)).clamp(max=source_mask.shape[1] - 1)
    return Alignment(index=index, fuse=fuse, rows=rows, source_mask=source_mask)


def _sequences(positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A flattened side's sequences: where each starts (index into the row) and its tokens."""
    starts = (positions[0] == 0).nonzero().squeeze(1)
    ends = torch.cat([starts[1:], starts.new_tensor([positions.shape[1]])])
    return starts, ends - starts


def _align_flat(target_mask, fusion_mask, source_mask, target_positions, source_positions) -> Alignment:
    """:func:`align` where a side is flattened: the target's sequences matched in order with the source's,
    ``index`` into the source's rows end to end."""
    target_mask, fusion_mask, source_mask = target_mask.bool(), fusion_mask.bool(), source_mask.bool()
    if source_positions is not None:  # flattened: its sequences by their position ids
        starts, n_source = _sequences(source_positions)
    else:  # padded: a row per sequence, its real tokens contiguous
        width = source_mask.shape[1]
        starts = torch.arange(source_mask.shape[0], device=source_mask.device) * width
        starts, n_source = starts + source_mask.long().argmax(-1), source_mask.sum(-1)
    if target_positions is None:
        raise ValueError("FLARE: a flattened source needs a flattened target (position_ids, no attention_mask)")
    if target_mask.shape[0] != 1:
        raise ValueError(f"FLARE: a flattened target is one row; got {target_mask.shape[0]}")
    sequence = (target_positions == 0).long().cumsum(-1) - 1  # [1, target_len]: the sequence of each position
    if int(sequence[0, -1]) + 1 != len(starts):
        raise ValueError(
            f"FLARE: the target batch has {int(sequence[0, -1]) + 1} sequences but the source batch has {len(starts)}"
        )
    n = n_source[sequence.clamp(min=0)]  # the source tokens of each target position's sequence
    rows = fusion_mask & target_mask & (n > 0)
    fuse = rows & (target_positions < n)  # the k-th token of a sequence is its position id
    index = (starts[sequence.clamp(min=0)] + target_positions).clamp(max=source_mask.numel() - 1)
    return Alignment(index=index, fuse=fuse, rows=rows, source_mask=source_mask, flat=True)


def step_alignment(prompt: Alignment, total: int, new: int) -> Alignment:
    """The alignment of one decoding step, which sees positions ``[total - new, total)``.

    ``prompt`` is the alignment of the prompt (its first positions); the tokens
    generated after it never fuse, as answer tokens do not in training.
    """
    generated = max(total - prompt.fuse.shape[1], 0)

    def window(t: torch.Tensor, generated_value: int | bool) -> torch.Tensor:
        t = torch.cat([t, t.new_full((t.shape[0], generated), generated_value)], 1)
        return t[:, total - new : total]

    # A generated position neither fuses nor reads the source: any valid index will do.
    return Alignment(
        window(prompt.index, 0), window(prompt.fuse, False), window(prompt.rows, False), prompt.source_mask
    )


def mask_or_ones(input_ids: torch.Tensor | None, mask: torch.Tensor | None) -> torch.Tensor:
    """``mask``, or all ones (no padding) in the shape of ``input_ids``."""
    if mask is not None:
        return mask
    if input_ids is None:
        raise ValueError("FLARE needs input_ids or an attention_mask to align source and target tokens")
    return torch.ones_like(input_ids)

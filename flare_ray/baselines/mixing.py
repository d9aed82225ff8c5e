"""X-Mixup's mixing: one block's attention sub-layer, run once more across two sequences with the block's own
(pretrained, LoRA-adapted) attention, the target's queries on the source's keys and values.

:func:`sublayer_of` finds it in a block of each family:

* **post-LN encoders** (XLM-R, BERT; the authors' ``models/bert.py``): the sub-layer is ``block.attention``;
  its output ``h`` is ``LayerNorm(Dense(SelfAttention(x)) + x)``; mixed:
  ``LayerNorm(lam * Dropout(Dense(CrossAttention(h_t, h_s))) + (1 - lam) * h_t)``.
* **pre-LN encoders** (mT5's encoder): the sub-layer is ``block.layer[0]``, ``h = x + O(SelfAttention(LN(x)))``;
  mixed: ``(1 - lam) * h_t + lam * Dropout(O(CrossAttention(LN(h_t), LN(h_s))))`` (T5's relative position
  bias relates the positions of one sequence: left out).
* **decoders** (Llama, Gemma): ``h = x + [Post](O(SelfAttention(Norm(x))))`` (Gemma's sandwich norm ``Post``),
  mixed as pre-LN, with rotary positions: the target's queries rotated by their positions, the source's keys
  by theirs; grouped key/value heads repeated; Gemma 2's logit soft-capping.

Each :class:`Sublayer` hooks its block so that a pass can read ``h`` (and the rotary positions) or replace
it: :meth:`Sublayer.hooks`. :func:`pair_entropy` is the authors' ``H(A) + H(A^T)``.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.hooks import RemovableHandle

OnOutput = Callable[[torch.Tensor, dict[str, Any]], "torch.Tensor | None"]


def _first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def _replace_first(output, value):
    return value if isinstance(output, torch.Tensor) else (value, *output[1:])


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """[batch, length, heads * dim] -> [batch, heads, length, dim]."""
    return x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)


def row_entropy(scores: torch.Tensor, key_mask: torch.Tensor, query_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' attention entropy (``get_attention_entropy``): per example, the mean over heads and query
    positions of ``-sum_j softmax(s + mask)_j * log_softmax(s * m)_j`` (``scores`` [batch, heads, q, k], scaled
    and unmasked; ``key_mask`` [batch, k], 1 at real keys). ``query_mask``: average over these query positions
    only (decoders: the prompt), else over all, as the authors."""
    m = key_mask[:, None, None, :].to(scores.dtype)
    attention = torch.softmax(scores + (1.0 - m) * -10000.0, dim=-1)
    rows = -(attention * torch.log_softmax(scores * m, dim=-1)).sum(-1)  # [batch, heads, q]
    if query_mask is None:
        return rows.mean((1, 2))
    weights = query_mask[:, None, :].to(rows.dtype).expand_as(rows)
    return (rows * weights).sum((1, 2)) / weights.sum((1, 2)).clamp_min(1)


def pair_entropy(
    scores: torch.Tensor, query_mask: torch.Tensor, key_mask: torch.Tensor, *, queries_only: bool = False
) -> torch.Tensor:
    """``H(A) + H(A^T)`` (the authors' ``get_pair_entropy``): the entropy of the target's attention over the
    source plus that of each source position over the target's. ``queries_only``: the first term averages
    over the real query positions only (decoders: the positions that mix)."""
    first = row_entropy(scores, key_mask, query_mask if queries_only else None)
    return first + row_entropy(scores.transpose(-1, -2), query_mask)


class Sublayer:
    """A block's attention sub-layer and its attention run across two sequences (see the module docstring)."""

    pre_ln = True  # the mix is of the residual stream (no LayerNorm after the sub-layer)

    def __init__(self, block: nn.Module) -> None:
        self.block = block

    def hooks(self, on_output: OnOutput) -> list[RemovableHandle]:
        """Hooks on the block that call ``on_output(h, state)`` with the sub-layer's output ``h`` (``state``: what
        :meth:`scores_and_values` needs of this pass) and make a tensor it returns the sub-layer's output."""
        raise NotImplementedError

    def scores_and_values(self, h_t: torch.Tensor, h_s: torch.Tensor, target: dict, source: dict):
        """The scores (scaled, unmasked) of the target's queries on the source's keys, [batch, heads, target,
        source], and the source's values, [batch, heads, source, dim]; ``target``/``source``: each pass's state."""
        raise NotImplementedError

    def project(self, context: torch.Tensor) -> torch.Tensor:
        """The attention's output projection (and what follows it inside the sub-layer) of ``context``."""
        raise NotImplementedError

    def dropout(self, weights: torch.Tensor) -> torch.Tensor:
        return weights

    def attend(self, scores: torch.Tensor, values: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """The source's values weighted by ``scores`` (source padding masked), projected: [batch, target, width]."""
        m = source_mask[:, None, None, :].bool()
        weights = torch.softmax(scores.float().masked_fill(~m, torch.finfo(torch.float32).min), dim=-1)
        context = (self.dropout(weights.to(values.dtype)) @ values).transpose(1, 2).flatten(2)
        return self.project(context)

    def mix(self, h_t: torch.Tensor, attended: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        lam = lam.view(-1, 1, 1).to(h_t.dtype)
        return lam * attended.to(h_t.dtype) + (1 - lam) * h_t


class _ModuleOutput(Sublayer):
    """Encoders: the sub-layer is one module, whose first output is ``h``."""

    module: nn.Module

    def hooks(self, on_output: OnOutput) -> list[RemovableHandle]:
        def after(_module, _args, output):
            new = on_output(_first(output), {})
            return None if new is None else _replace_first(output, new)

        return [self.module.register_forward_hook(after)]


class PostLNEncoder(_ModuleOutput):
    """XLM-R, BERT: ``block.attention`` (``self``: query, key, value; ``output``: dense, dropout, LayerNorm)."""

    pre_ln = False

    def __init__(self, block: nn.Module) -> None:
        super().__init__(block)
        self.module = block.attention

    def scores_and_values(self, h_t, h_s, target, source):
        attention = self.module.self
        heads = attention.num_attention_heads
        q, k, v = (
            _heads(attention.query(h_t), heads),
            _heads(attention.key(h_s), heads),
            _heads(attention.value(h_s), heads),
        )
        return (q @ k.transpose(-1, -2)) * attention.attention_head_size**-0.5, v

    def dropout(self, weights):
        return self.module.self.dropout(weights)

    def project(self, context):
        return self.module.output.dropout(self.module.output.dense(context))

    def mix(self, h_t, attended, lam):
        lam = lam.view(-1, 1, 1).to(h_t.dtype)
        return self.module.output.LayerNorm(lam * attended + (1 - lam) * h_t)


class T5Encoder(_ModuleOutput):
    """mT5's encoder: ``block.layer[0]`` (``layer_norm``; ``SelfAttention``: q, k, v, o, unscaled; ``dropout``)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__(block)
        self.module = block.layer[0]

    def scores_and_values(self, h_t, h_s, target, source):
        attention, norm = self.module.SelfAttention, self.module.layer_norm
        heads = attention.n_heads
        q, k, v = (
            _heads(attention.q(norm(h_t)), heads),
            _heads(attention.k(norm(h_s)), heads),
            _heads(attention.v(norm(h_s)), heads),
        )
        return q @ k.transpose(-1, -2), v  # T5 does not scale its scores

    def dropout(self, weights):
        return F.dropout(weights, p=self.module.SelfAttention.dropout, training=self.module.training)

    def project(self, context):
        return self.module.dropout(self.module.SelfAttention.o(context))


class Decoder(Sublayer):
    """Llama, Gemma: ``input_layernorm``, ``self_attn`` (q/k/v/o_proj, rotary positions, grouped key/value heads)
    and, with a sandwich norm (Gemma 2/3), ``post_attention_layernorm`` before the residual sum."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__(block)
        self.attention, self.norm = block.self_attn, block.input_layernorm
        self.post = block.post_attention_layernorm if hasattr(block, "pre_feedforward_layernorm") else None
        module = sys.modules[type(self.attention).__module__]  # the model's own rotary and key/value helpers
        self._rotate, self._repeat_kv = module.apply_rotary_pos_emb, module.repeat_kv

    def hooks(self, on_output: OnOutput) -> list[RemovableHandle]:
        state: dict[str, Any] = {}

        def before(_module, args, kwargs):
            state["x"] = args[0] if args else kwargs["hidden_states"]
            state["rotary"] = kwargs.get("position_embeddings")

        def after(_module, _args, output):  # the module whose output joins the residual stream: h = x + output
            if state.get("mixing"):  # Gemma's post-attention norm, called again by project(): not a sub-layer output
                return None
            x, state["mixing"] = state["x"], True
            try:
                new = on_output(x + _first(output), {k: v for k, v in state.items() if k != "mixing"})
            finally:
                state["mixing"] = False
            return None if new is None else _replace_first(output, new - x)

        joined = self.post if self.post is not None else self.attention
        return [self.block.register_forward_pre_hook(before, with_kwargs=True), joined.register_forward_hook(after)]

    def _states(self, h: torch.Tensor, projection: nn.Module) -> torch.Tensor:
        states = projection(self.norm(h)).view(h.shape[0], h.shape[1], -1, self.attention.head_dim).transpose(1, 2)
        return states

    def scores_and_values(self, h_t, h_s, target, source):
        attention = self.attention
        q, k, v = (
            self._states(h_t, attention.q_proj),
            self._states(h_s, attention.k_proj),
            self._states(h_s, attention.v_proj),
        )
        if hasattr(attention, "q_norm"):  # Gemma 3, Qwen 3: per-head norms before the rotation
            q, k = attention.q_norm(q), attention.k_norm(k)
        q = self._rotate(q, q, *target["rotary"])[0]  # each sequence rotated by its own positions
        k = self._rotate(k, k, *source["rotary"])[0]
        groups = attention.num_key_value_groups
        k, v = self._repeat_kv(k, groups), self._repeat_kv(v, groups)
        scores = (q @ k.transpose(-1, -2)) * attention.scaling
        cap = getattr(attention.config, "attn_logit_softcapping", None)
        if cap:  # Gemma 2
            scores = torch.tanh(scores / cap) * cap
        return scores, v

    def dropout(self, weights):
        return F.dropout(weights, p=self.attention.attention_dropout, training=self.attention.training)

    def project(self, context):
        out = self.attention.o_proj(context)
        return self.post(out) if self.post is not None else out


def sublayer_of(block: nn.Module) -> Sublayer:
    """The attention sub-layer of a transformer block of XLM-R/BERT, (m)T5's encoder, Llama or Gemma."""
    if hasattr(block, "attention") and hasattr(block.attention, "self"):
        return PostLNEncoder(block)
    if hasattr(block, "layer") and hasattr(block.layer[0], "SelfAttention"):
        return T5Encoder(block)
    if hasattr(block, "self_attn") and hasattr(block, "input_layernorm") and hasattr(block.self_attn, "q_proj"):
        return Decoder(block)
    raise ValueError(
        f"X-Mixup: no attention sub-layer known in {type(block).__name__} (XLM-R/BERT, mT5's encoder, "
        "Llama or Gemma blocks)"
    )

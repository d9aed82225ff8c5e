"""X-Mixup (Yang et al., ICLR 2022, "Enhancing Cross-lingual Transfer by Manifold Mixup"), the paper's
representation-mixing baseline, on a peft LoRA model, as its authors built it
(github yhy1117/X-Mixup: ``xmixup/tasks/layer_mixup.py``, ``models/bert.py``, the trainers).

The source (English) and the target run through the same adapted model (the source with gradients:
X-Mixup trains on both). In one block (``layer``) the target is mixed with the source **inside the
attention sub-layer, with the block's own (pretrained, LoRA-adapted) attention**: after the target's
self-attention sub-layer (``h_t``) and the source's (``h_s``), the same attention runs once more with the
target's queries and the source's keys and values (source padding masked), and its output projection
and LayerNorm mix (post-LN encoders: XLM-R, BERT)::

    h_mix = LayerNorm(lam * Dropout(Dense(CrossAttention(h_t, h_s))) + (1 - lam) * h_t)
    lam   = ratio * sigmoid(w * H + b)            (w, b per model; initialised 1 and 0, as the authors)
    H     = H(A) + H(A^T)                         (the pair entropy of the cross-attention scores A)

then the block's feed-forward sub-layer reads ``h_mix``. ``H(A)`` is the authors' entropy of the
attention rows: with scores ``s`` (scaled, before the mask) and the keys' mask ``m``,
``-sum_j softmax(s + mask)_j * log_softmax(s * m)_j``, averaged over heads and query positions;
``H(A^T)`` the same of the transposed scores (each source position over the target's). ``ratio`` is
the authors' ``lambda_0`` (0.5). For mT5's pre-LN encoder blocks the mix is of the residual stream,
``(1 - lam) * h_t + lam * Dropout(O(CrossAttention(LN(h_t), LN(h_s))))`` (no LayerNorm follows a T5
sub-layer; T5's relative position bias, which relates positions of one sequence, is left out).

The loss (classification; the authors' ``run_classifier``)::

    alpha * CE(source) + (1 - alpha) * CE(mixed target) + kl_weight * KL(p_source || p_target)
        + mse_weight * MSE(r_source, r_target)

with ``r`` the last block's output at the first token (encoders) or averaged over real tokens
(encoder-decoders; QA: the authors average the tokens between the first and the last). Extractive QA
(``run_squad``): ``alpha * span loss(source) + (1 - alpha) * span loss(target)`` with ``alpha`` 0.2 when the
source is the gold English with its answer span (``source_start_positions``), the target's span loss
alone otherwise, plus the MSE term.

**The source is scheduled** (the authors' scheduled sampling): at training step ``t`` the source is the
gold English with probability ``k / (k + exp(t / k))`` (``k``: ``schedule_k``; the authors' 1000 for
classification, 2000 for QA), else the back-translation of the target into English
(``back_translation_input_ids``, when the batch has it: the translation stage makes it for X-Mixup), so
that training moves towards the inference condition, where the source is a machine translation. The
draws come from a generator seeded by ``seed``. Without back-translations the source is always the gold one.

At inference the source is the test set's English side (translate-test, as in the authors'
``--mixup_inference``); classification predicts from the mean of the source and target logits, QA
from the target's.

**Decoders** (Llama, Gemma: the paper reports X-Mixup for them without saying how; this project's
choice): the prompt positions of the target mix in the chosen block's attention sub-layer, as mT5's
pre-LN blocks do (the rotary positions of each sequence its own; see :mod:`.mixing`), the answer positions
do not (FLARE's rule for decoders); the loss is the target's language-model loss on the answer plus
``mse_weight * MSE`` of the mean prompt representations (the English prompt has no answer: no source task
loss, no KL); :meth:`XMixupModel.generate` mixes the prompt at prefill only.

Not implemented: soft labels for tagging (no tagging task); mT5 with a generative head.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

from flare_ray.fusion import ArchitectureFamily, FlareConfig, plan_fusion
from flare_ray.fusion.model import step_span

from .config import XMixupConfig  # the options: in a leaf module (a config is checked without torch)
from .mixing import pair_entropy, sublayer_of

CONFIG_NAME = "xmixup_config.json"
WEIGHTS_NAME = "xmixup_model.safetensors"


def _span_loss(output, starts: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    return (F.cross_entropy(output.start_logits.float(), starts) + F.cross_entropy(output.end_logits.float(), ends)) / 2


class XMixupModel(nn.Module):
    """A peft LoRA model with X-Mixup's mixing in one block's attention sub-layer (see the module docstring)."""

    def __init__(self, peft_model: PeftModel, config: XMixupConfig | None = None) -> None:
        super().__init__()
        self.peft_model, self.config = peft_model, config or XMixupConfig()
        base = peft_model.get_base_model()
        self.family = ArchitectureFamily.of(base)
        self.decoder = self.family is ArchitectureFamily.DECODER
        if self.family is ArchitectureFamily.ENCODER_DECODER and hasattr(base, "lm_head"):
            raise ValueError(
                f"X-Mixup on {type(base).__name__}: mT5 with a generative head is not implemented; use "
                "model.head: task (a classification or span head, the authors' mT5 recipe)"
            )
        self.blocks = plan_fusion(base, FlareConfig()).blocks  # the (encoder's) stack of blocks
        self.qa = "QuestionAnswering" in type(base).__name__
        self.pool_mean = self.qa or self.family is not ArchitectureFamily.ENCODER
        depth = len(self.blocks)
        layer = self.config.layer if self.config.layer is not None else (round(15 * depth / 24) if self.qa else 0)
        if not -depth <= layer < depth:
            raise ValueError(f"X-Mixup: layer {layer} is outside the {depth} blocks of this model")
        self.layer = layer % depth
        self.sublayer = sublayer_of(self.blocks[self.layer])
        self.gate = nn.Linear(1, 1)  # lam = ratio * sigmoid(w * H + b)
        with torch.no_grad():
            self.gate.weight.fill_(1.0)
            self.gate.bias.zero_()
        self.gate.to(next(p.device for p in base.parameters()))
        self.alpha = self.config.alpha if self.config.alpha is not None else (0.2 if self.qa else 0.4)
        self.schedule_k = self.config.schedule_k or (2000 if self.qa else 1000)
        self.steps = 0  # training forwards so far (the schedule's t)
        self._draws = torch.Generator().manual_seed(self.config.seed)
        self.losses: dict[str, torch.Tensor] = {}  # the last forward's loss terms (weighted), the ratio, the source

    # -- the mixing ---------------------------------------------------------------
    def ratio(self, scores: torch.Tensor, target_mask: torch.Tensor, source_mask: torch.Tensor) -> torch.Tensor:
        """``lam = ratio * sigmoid(w * H + b)`` per example, ``H`` the pair entropy of ``scores``."""
        entropy = pair_entropy(
            scores.float(), target_mask.to(scores.device), source_mask.to(scores.device), queries_only=self.decoder
        )
        return self.config.ratio * torch.sigmoid(self.gate(entropy.unsqueeze(-1).to(self.gate.weight.dtype)))[:, 0]

    def mix(self, h_t: torch.Tensor, target: dict[str, Any], mix_mask: torch.Tensor, source: dict[str, Any]):
        """The attention sub-layer's mixed output for the target (``h_t``: its own sub-layer output; ``mix_mask``:
        the positions that mix, [batch, length]) with the source's (``source``: its sub-layer output ``h``, mask
        and state); and lam."""
        h_s, source_mask = source["h"].to(h_t.device), source["mask"].to(h_t.device)
        scores, values = self.sublayer.scores_and_values(h_t, h_s, target, source["state"])
        lam = self.ratio(scores, mix_mask, source_mask)
        mixed = self.sublayer.mix(h_t, self.sublayer.attend(scores, values, source_mask), lam)
        if self.decoder:  # the prompt mixes; the answer, as the generated tokens, does not
            mixed = torch.where(mix_mask.to(h_t.device).bool().unsqueeze(-1), mixed, h_t)
        return mixed, lam

    def _hooks(self, kept: dict[str, Any], source: dict[str, Any] | None, mix_mask: Callable[[], torch.Tensor | None]):
        """Hooks for one pass: without ``source`` the sub-layer's output and state are kept (a source pass),
        with it the positions ``mix_mask()`` names are mixed (a target pass); the last block's output is kept."""

        def on_output(h: torch.Tensor, state: dict[str, Any]) -> torch.Tensor | None:
            if source is None:
                kept.update(sublayer=h, state=state)
                return None
            mask = mix_mask()
            if mask is None or not mask.any():
                return None
            mixed, kept["lam"] = self.mix(h, state, mask, source)
            return mixed

        def at_last(_module, _args, output):
            kept["last"] = output if isinstance(output, torch.Tensor) else output[0]

        return [*self.sublayer.hooks(on_output), self.blocks[-1].register_forward_hook(at_last)]

    def _pass(
        self, inputs: dict[str, torch.Tensor], source: dict[str, Any] | None, mix_mask: torch.Tensor | None = None
    ):
        """One pass of the adapted model (a source pass without ``source``, else a target pass that mixes)."""
        kept: dict[str, Any] = {}
        # The mixing block runs once, not again under gradient checkpointing (its hooks are gone by then).
        self.blocks[self.layer].gradient_checkpointing = False
        mask = mix_mask if mix_mask is not None else inputs["attention_mask"]
        handles = self._hooks(kept, source, lambda: mask)
        try:
            outputs = self.peft_model(**inputs)
        finally:
            for handle in handles:
                handle.remove()
        return outputs, kept

    def _representation(self, last: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.pool_mean:
            return last[:, 0]
        mask = mask.unsqueeze(-1).to(last.dtype)
        return (last * mask).sum(1) / mask.sum(1).clamp_min(1)

    def gold_probability(self) -> float:
        """The schedule: the probability that the source of the next training step is the gold English."""
        k = self.schedule_k
        return k / (k + math.exp(min(self.steps / k, 700.0)))

    def _source(self, gold: dict[str, torch.Tensor], back: dict[str, torch.Tensor] | None) -> tuple[dict, bool]:
        """The source of this forward (the gold one, or in training the back-translation by the schedule)."""
        if not self.training:
            return gold, True
        draw = torch.rand((), generator=self._draws).item()
        use_gold = back is None or draw <= self.gold_probability()
        self.steps += 1
        return (gold if use_gold else back), use_gold

    def _source_pass(self, inputs: dict[str, torch.Tensor]) -> tuple[Any, dict[str, Any]]:
        out, kept = self._pass(inputs, None)
        return out, {
            "h": kept["sublayer"],
            "state": kept["state"],
            "mask": inputs["attention_mask"],
            "last": kept["last"],
        }

    # -- the forward --------------------------------------------------------------------
    def forward(
        self,
        input_ids=None,
        attention_mask=None,
        *,
        source_input_ids=None,
        source_attention_mask=None,
        back_translation_input_ids=None,
        back_translation_attention_mask=None,
        labels=None,
        start_positions=None,
        end_positions=None,
        source_start_positions=None,
        source_end_positions=None,
        **kwargs,
    ):
        target = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if source_input_ids is None:  # no source: the plain LoRA model
            target.update(
                {
                    k: v
                    for k, v in (
                        ("labels", labels),
                        ("start_positions", start_positions),
                        ("end_positions", end_positions),
                    )
                    if v is not None
                }
            )
            return self.peft_model(**target)
        gold = {"input_ids": source_input_ids, "attention_mask": source_attention_mask, **kwargs}
        back = None
        if back_translation_input_ids is not None:
            back = {
                "input_ids": back_translation_input_ids,
                "attention_mask": back_translation_attention_mask,
                **kwargs,
            }
        source_inputs, is_gold = self._source(gold, back)
        src, source = self._source_pass(source_inputs)
        if self.decoder:
            return self._decoder_forward(target, labels, source, is_gold)
        trg, trg_kept = self._pass(target, source)
        r_src = self._representation(source["last"], source["mask"])
        r_trg = self._representation(trg_kept["last"], attention_mask)
        consistency = self.config.mse_weight * F.mse_loss(r_trg.float(), r_src.float())
        self.losses = {
            "mse": consistency.detach(),
            "ratio": trg_kept["lam"].detach().mean(),
            "gold_source": torch.tensor(float(is_gold)),
        }
        if self.qa:
            loss = None
            if start_positions is not None:
                task = _span_loss(trg, start_positions, end_positions)
                if is_gold and source_start_positions is not None:  # the English span is known
                    source_task = _span_loss(src, source_start_positions, source_end_positions)
                    task = self.alpha * source_task + (1 - self.alpha) * task
                loss = task + consistency
                self.losses["task"] = task.detach()
            return QuestionAnsweringModelOutput(loss=loss, start_logits=trg.start_logits, end_logits=trg.end_logits)
        loss = None
        if labels is not None:
            alpha = self.alpha
            task = alpha * F.cross_entropy(src.logits.float(), labels) + (1 - alpha) * F.cross_entropy(
                trg.logits.float(), labels
            )
            kl = F.kl_div(
                F.log_softmax(trg.logits.float(), -1),
                F.log_softmax(src.logits.float(), -1),
                log_target=True,
                reduction="batchmean",
            )  # KL(p_source || p_target)
            loss = task + self.config.kl_weight * kl + consistency
            self.losses.update(task=task.detach(), kl=(self.config.kl_weight * kl).detach())
        logits = trg.logits if self.training else (src.logits + trg.logits) / 2  # the authors' test-time average
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def _decoder_forward(self, target: dict, labels: torch.Tensor | None, source: dict[str, Any], is_gold: bool):
        """Decoders (this project's choice, see the module docstring): the prompt mixes; the loss is the target's
        language-model loss on the answer plus the MSE of the mean prompt representations."""
        prompt = (
            target["attention_mask"].bool() & (labels == -100)
            if labels is not None
            else target["attention_mask"].bool()
        )
        trg, trg_kept = self._pass({**target, **({"labels": labels} if labels is not None else {})}, source, prompt)
        r_src = self._representation(source["last"], source["mask"])
        r_trg = self._representation(trg_kept["last"], prompt)
        consistency = self.config.mse_weight * F.mse_loss(r_trg.float(), r_src.float())
        self.losses = {
            "mse": consistency.detach(),
            "ratio": trg_kept["lam"].detach().mean(),
            "gold_source": torch.tensor(float(is_gold)),
        }
        if trg.loss is not None:
            self.losses["task"] = trg.loss.detach()
            trg.loss = trg.loss + consistency
        return trg

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        *,
        source_input_ids=None,
        source_attention_mask=None,
        **generate_kwargs,
    ):
        """Generate (decoders): the prompt mixes with the source at prefill; generated tokens do not (as the
        answer does not in training), with or without the KV cache."""
        attention_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
        if source_input_ids is None or not self.decoder:
            return self.peft_model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        _, source = self._source_pass({"input_ids": source_input_ids, "attention_mask": source_attention_mask})
        prompt_length, step = input_ids.shape[1], {}

        def see_step(_module, _args, kwargs):  # the positions [total - new, total) this call sees
            step["span"] = step_span(kwargs)

        def mix_mask() -> torch.Tensor | None:
            total, new = step["span"]
            start = total - new
            if start >= prompt_length:
                return None
            return (
                attention_mask[:, start : min(total, prompt_length)].bool()
                if total <= prompt_length
                else torch.cat(
                    [
                        attention_mask[:, start:],
                        attention_mask.new_zeros(attention_mask.shape[0], total - prompt_length),
                    ],
                    1,
                ).bool()
            )

        self.blocks[self.layer].gradient_checkpointing = False
        kept: dict[str, Any] = {}
        handles = [
            self.peft_model.get_base_model().register_forward_pre_hook(see_step, with_kwargs=True),
            *self._hooks(kept, source, mix_mask),
        ]
        try:
            return self.peft_model.generate(input_ids=input_ids, attention_mask=attention_mask, **generate_kwargs)
        finally:
            for handle in handles:
                handle.remove()

    # -- saving and loading -------------------------------------------------------------
    def mixup_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith("gate.")}

    def save_pretrained(self, directory: str | Path) -> Path:
        directory = Path(directory)
        self.peft_model.save_pretrained(directory)
        (directory / CONFIG_NAME).write_text(json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n")
        save_file({k: v.detach().contiguous() for k, v in self.mixup_state_dict().items()}, directory / WEIGHTS_NAME)
        return directory

    @classmethod
    def from_pretrained(cls, model: nn.Module, directory: str | Path) -> "XMixupModel":
        """A saved X-Mixup adapter on ``model`` (the base model it was trained on), frozen."""
        directory = Path(directory)
        weights = load_file(directory / WEIGHTS_NAME)
        if set(weights) != {"gate.weight", "gate.bias"}:
            raise ValueError(
                f"{directory / WEIGHTS_NAME}: an X-Mixup adapter of an earlier version (its own "
                f"cross-attention: {sorted(weights)[:3]}...); this version reuses the model's "
                "attention and saves only the gate (gate.weight, gate.bias): train it again"
            )
        config = XMixupConfig(**json.loads((directory / CONFIG_NAME).read_text()))
        mixup = cls(PeftModel.from_pretrained(model, directory, low_cpu_mem_usage=True), config)
        mixup.load_state_dict(weights, strict=False)
        return mixup.requires_grad_(False)

"""X-Mixup (Yang et al., ICLR 2022, "Enhancing Cross-lingual Transfer by Manifold Mixup"), the paper's
representation-mixing baseline, on a peft LoRA model with a task head.

The source (English) and the target run through the same adapted model (the source with gradients:
X-Mixup trains on both). In one chosen block the target's hidden states are mixed with the source's
by cross-attention (target queries, source keys and values, source padding masked)::

    h_mix = LayerNorm(lam * CrossAttention(h_t, h_s, h_s) + (1 - lam) * h_t)
    lam   = ratio * sigmoid(w * H + b)

where ``H`` is the mean entropy of the cross-attention rows of an example (normalised by the log of
the source length; ``w``, ``b`` trained, initialised to 1 and 0 as in the authors' code) and ``ratio``
the authors' ``lambda_0`` (0.5). The blocks after it read ``h_mix``. The loss (classification):

    alpha * CE(source) + (1 - alpha) * CE(mixed target) + kl_weight * KL(p_source || p_target)
        + mse_weight * MSE(r_source, r_target)

with ``r`` the last block's output at the first token (encoders) or averaged over real tokens
(encoder-decoders; QA). For extractive QA the target's span loss and the MSE term are used (the
English span is not encoded). At inference the source is the test set's English side (translate-test,
as in the authors' ``--mixup_inference``); classification predicts from the mean of the source and
target logits, QA from the target's.

Not implemented, and why: the authors' scheduled sampling between gold English and back-translations
(no back-translations here), soft labels for tagging (no tagging task), decoders (the authors' code is
for encoders; the paper applies X-Mixup to decoders without saying how). Its own cross-attention module
is new parameters (the authors reuse the block's attention weights), as the FLARE paper describes it.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F
from transformers.modeling_outputs import QuestionAnsweringModelOutput, SequenceClassifierOutput

from flare_ray.fusion import ArchitectureFamily, FlareConfig, plan_fusion

from .config import XMixupConfig  # the options: in a leaf module (a config is checked without torch)

CONFIG_NAME = "xmixup_config.json"
WEIGHTS_NAME = "xmixup_model.safetensors"


def _first(output):
    return output if isinstance(output, torch.Tensor) else output[0]


def _replace_first(output, value):
    return value if isinstance(output, torch.Tensor) else (value, *output[1:])


class XMixupModel(nn.Module):
    """A peft LoRA model with X-Mixup's cross-attention mixing in one block (see the module docstring)."""

    def __init__(self, peft_model: PeftModel, config: XMixupConfig | None = None) -> None:
        super().__init__()
        self.peft_model, self.config = peft_model, config or XMixupConfig()
        base = peft_model.get_base_model()
        family = ArchitectureFamily.of(base)
        if family is ArchitectureFamily.DECODER:
            raise ValueError("X-Mixup is implemented for task heads (encoders; mT5 with model.head: task), not for "
                             f"decoders ({type(base).__name__})")
        self.blocks = plan_fusion(base, FlareConfig()).blocks  # the (encoder's) stack of blocks
        self.qa = "QuestionAnswering" in type(base).__name__
        self.pool_mean = self.qa or family is ArchitectureFamily.ENCODER_DECODER
        depth = len(self.blocks)
        layer = self.config.layer if self.config.layer is not None else (round(15 * depth / 24) if self.qa else 0)
        if not -depth <= layer < depth:
            raise ValueError(f"X-Mixup: layer {layer} is outside the {depth} blocks of this model")
        self.layer = layer % depth
        text = base.config.get_text_config()
        width = getattr(text, "hidden_size", None) or text.d_model
        heads = self.config.heads or getattr(text, "num_attention_heads", None) or text.num_heads
        if width % heads:
            raise ValueError(f"X-Mixup: {heads} heads do not divide the model width {width}")
        self.cross_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)
        self.gate = nn.Linear(1, 1)
        with torch.no_grad():
            self.gate.weight.fill_(1.0)
            self.gate.bias.zero_()
        device = next(p.device for p in base.parameters())
        for module in (self.cross_attention, self.norm, self.gate):
            module.to(device)
        self.losses: dict[str, torch.Tensor] = {}  # the last forward's loss terms (weighted), and the mean ratio

    # -- the mixing ---------------------------------------------------------------
    def mix(self, h_t: torch.Tensor, target_mask: torch.Tensor, h_s: torch.Tensor, source_mask: torch.Tensor):
        """``LayerNorm(lam * CrossAttention(h_t, h_s, h_s) + (1 - lam) * h_t)`` at real target tokens; and lam."""
        dtype = h_t.dtype
        h_t32, h_s32 = h_t.float(), h_s.to(h_t.device).float()
        attended, weights = self.cross_attention(
            h_t32, h_s32, h_s32, key_padding_mask=~source_mask.bool(), need_weights=True, average_attn_weights=True
        )
        entropy = -(weights * weights.clamp_min(1e-12).log()).sum(-1)  # [batch, target_len]
        entropy = entropy / source_mask.sum(-1, keepdim=True).clamp_min(2).float().log()
        real = target_mask.bool()
        mean_entropy = (entropy * real).sum(-1) / real.sum(-1).clamp_min(1)
        lam = self.config.ratio * torch.sigmoid(self.gate(mean_entropy.unsqueeze(-1)))  # [batch, 1]
        mixed = self.norm(lam.unsqueeze(-1) * attended + (1 - lam.unsqueeze(-1)) * h_t32)
        return torch.where(real.unsqueeze(-1), mixed, h_t32).to(dtype), lam

    def _pass(self, inputs: dict[str, torch.Tensor], mix_with: tuple[torch.Tensor, torch.Tensor] | None):
        """One pass of the adapted model; the output of the mixing block and the last block's output."""
        kept: dict[str, torch.Tensor] = {}

        def at_layer(_module, _args, output):
            if mix_with is None:
                kept["layer"] = _first(output)
                return None
            mixed, kept["lam"] = self.mix(_first(output), inputs["attention_mask"], *mix_with)
            return _replace_first(output, mixed)

        def at_last(_module, _args, output):
            kept["last"] = _first(output)

        handles = [self.blocks[self.layer].register_forward_hook(at_layer),
                   self.blocks[-1].register_forward_hook(at_last)]  # fmt: skip
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

    # -- the forward --------------------------------------------------------------------
    def forward(self, input_ids=None, attention_mask=None, *, source_input_ids=None, source_attention_mask=None,
                labels=None, start_positions=None, end_positions=None, **kwargs):
        target = {"input_ids": input_ids, "attention_mask": attention_mask, **kwargs}
        if source_input_ids is None:  # no source: the plain LoRA model
            target.update({k: v for k, v in (("labels", labels), ("start_positions", start_positions),
                                              ("end_positions", end_positions)) if v is not None})  # fmt: skip
            return self.peft_model(**target)
        source = {"input_ids": source_input_ids, "attention_mask": source_attention_mask, **kwargs}
        src, src_kept = self._pass(source, None)
        trg, trg_kept = self._pass(target, (src_kept["layer"], source_attention_mask))
        r_src = self._representation(src_kept["last"], source_attention_mask)
        r_trg = self._representation(trg_kept["last"], attention_mask)
        consistency = self.config.mse_weight * F.mse_loss(r_trg.float(), r_src.float())
        self.losses = {"mse": consistency.detach(), "ratio": trg_kept["lam"].detach().mean()}
        if self.qa:
            loss = None
            if start_positions is not None:
                task = (F.cross_entropy(trg.start_logits.float(), start_positions)
                        + F.cross_entropy(trg.end_logits.float(), end_positions)) / 2  # fmt: skip
                loss = task + consistency
                self.losses["task"] = task.detach()
            return QuestionAnsweringModelOutput(loss=loss, start_logits=trg.start_logits, end_logits=trg.end_logits)
        loss = None
        if labels is not None:
            alpha = 0.4 if self.config.alpha is None else self.config.alpha
            task = alpha * F.cross_entropy(src.logits.float(), labels) + (1 - alpha) * F.cross_entropy(trg.logits.float(), labels)
            kl = F.kl_div(F.log_softmax(trg.logits.float(), -1), F.log_softmax(src.logits.float(), -1),
                          log_target=True, reduction="batchmean")  # KL(p_source || p_target)
            loss = task + self.config.kl_weight * kl + consistency
            self.losses.update(task=task.detach(), kl=(self.config.kl_weight * kl).detach())
        logits = trg.logits if self.training else (src.logits + trg.logits) / 2  # the authors' test-time average
        return SequenceClassifierOutput(loss=loss, logits=logits)

    # -- saving and loading -------------------------------------------------------------
    def mixup_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if k.startswith(("cross_attention.", "norm.", "gate."))}

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
        config = XMixupConfig(**json.loads((directory / CONFIG_NAME).read_text()))
        mixup = cls(PeftModel.from_pretrained(model, directory), config)
        mixup.load_state_dict(load_file(directory / WEIGHTS_NAME), strict=False)
        return mixup.requires_grad_(False)

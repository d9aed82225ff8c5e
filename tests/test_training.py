"""Every architecture family trains with every fusion function: the loss falls on a fixed batch."""

from __future__ import annotations

import pytest
import torch

from .helpers import FAMILIES, FUSIONS, batches, flare, source_kwargs, task_kwargs


def train_steps(fm, batch: dict, steps: int, lr: float = 1e-2) -> list[float]:
    params = [p for p in fm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    fm.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = fm(**batch).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("fusion", FUSIONS)
def test_loss_decreases(tiny_path, family, fusion):
    # decoders adapt all linear layers, as in the paper's QLoRA setup (fusion stays in q and v)
    targets = "all-linear" if family.startswith("decoder") else None
    fm, tok = flare(tiny_path, family, fusion=fusion, lora=dict(r=8, lora_alpha=16, target_modules=targets))
    t, s = batches(tok)
    trainable = {n for n, p in fm.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("lora_B" in n for n in trainable)
    assert (fusion == "cross_attention") == any(n.startswith("fusions.") for n in trainable)
    before = {n: p.detach().clone() for n, p in fm.named_parameters()}
    losses = train_steps(fm, {**t, **source_kwargs(s), **task_kwargs(family, tok, t)}, steps=15, lr=3e-2)
    assert losses[-1] < 0.8 * losses[0], losses
    for n, p in fm.named_parameters():  # only the adapter (and task head) moved
        assert torch.equal(p, before[n]) != (n in trainable), n

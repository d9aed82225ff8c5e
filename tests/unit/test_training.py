"""Every architecture family (and mT5 with task heads) trains with every fusion function: the loss falls on a fixed batch."""

from __future__ import annotations

import pytest
import torch

from flare_ray.fusion import FlareConfig, get_flare_model
from flare_ray.models.loading import load_model
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder
from tests.helpers import FAMILIES, FUSIONS, batches, flare, source_kwargs, task_kwargs, train_steps


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


@pytest.mark.parametrize("fusion", FUSIONS)
@pytest.mark.parametrize("head", ["classification", "span"])
def test_mt5_with_a_task_head_loss_decreases(tiny_path, fusion, head):
    """mT5 with the authors' task heads (MT5ForSequenceClassification / MT5ForQuestionAnswering), as encoded
    for training by the TaskEncoder: the English source through the same encoder-decoder."""
    name, language = ("nusax", "jav") if head == "classification" else ("tydiqa", "sw")
    task = get_task({"name": name, "language": language, "max_records": {"test": 4}})
    torch.manual_seed(0)
    model, tok = load_model(str(tiny_path("mt5")), "encoder_decoder", labels=task.labels)  # default head: task
    head_class, head_module = {
        "classification": ("MT5ForSequenceClassification", "classification_head"),
        "span": ("MT5ForQuestionAnswering", "qa_outputs"),
    }[head]
    assert type(model).__name__ == head_class
    fm = get_flare_model(model, FlareConfig(fusion=fusion))
    batch = TaskEncoder(task, tok, "encoder_decoder", 64).train_batch(list(task.load("test"))).inputs
    assert "source_input_ids" in batch
    trainable = {n for n, p in fm.named_parameters() if p.requires_grad}
    assert any(head_module in n for n in trainable)  # the task head trains beside the adapter
    losses = train_steps(fm, batch, steps=15, lr=3e-2)
    assert losses[-1] < 0.8 * losses[0], losses

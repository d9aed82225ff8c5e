"""Fusion is live in training mode, with gradient checkpointing and on 4-bit QLoRA models, and
the gradient of the down-projection A flows through the source branch too.

The authors' public code trained Llama/Gemma FLARE as plain LoRA: gradient
checkpointing re-ran the layers without the source. These tests would catch that.
"""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, prepare_model_for_kbit_training
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

from flare_ray.fusion import FlareConfig, get_flare_model
from tests.helpers import batches, flare, randomize_lora, source_kwargs, task_kwargs

OTHER_SOURCE = ["My cat sleeps on the warm sofa all day.", "Rain."]


def _a_grad(fm, site, t, s, labels):
    fm.zero_grad(set_to_none=True)
    out = fm(**t, **source_kwargs(s), **labels)
    out.loss.backward()
    return out.loss.detach(), site.layer.lora_A["default"].weight.grad.clone()


def _check_source_branch(fm, tok, family="decoder"):
    fm.train()
    t, s = batches(tok)
    _, s_other = batches(tok, source=OTHER_SOURCE)
    labels = task_kwargs(family, tok, t)
    site = fm.plan.sites[0]
    torch.manual_seed(0)
    loss, grad = _a_grad(fm, site, t, s, labels)
    torch.manual_seed(0)
    loss_other, grad_other = _a_grad(fm, site, t, s_other, labels)
    with fm.fusion_disabled():
        torch.manual_seed(0)
        fm.zero_grad(set_to_none=True)
        plain = fm(**t, **labels)
        plain.loss.backward()
        grad_plain = site.layer.lora_A["default"].weight.grad.clone()
    assert fm.training and fm.peft_model.get_base_model().training
    # fused, in training mode, differs from plain LoRA ...
    assert not torch.allclose(loss, plain.loss.detach())
    assert not torch.allclose(grad, grad_plain)
    # ... and only the source changed, yet A's gradient changed: it flows through A(x_S).
    assert not torch.allclose(loss, loss_other)
    assert not torch.allclose(grad, grad_other)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("checkpointing", [None, {"use_reentrant": False}, {"use_reentrant": True}])
def test_fusion_is_trained_with_and_without_gradient_checkpointing(tiny_path, checkpointing):
    fm, tok = flare(tiny_path, "decoder", fusion="add_relu")
    randomize_lora(fm, scale=0.2)
    base = fm.peft_model.get_base_model()
    if checkpointing is not None:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        base.enable_input_require_grads()
        assert base.is_gradient_checkpointing
    _check_source_branch(fm, tok)


def test_checkpointed_gradients_equal_uncheckpointed_ones(tiny_path):
    grads = []
    for checkpointing in (False, True):
        fm, tok = flare(tiny_path, "decoder", fusion="cross_attention")
        randomize_lora(fm, scale=0.2)
        if checkpointing:
            fm.peft_model.get_base_model().gradient_checkpointing_enable({"use_reentrant": False})
        fm.train()
        t, s = batches(tok)
        fm(**t, **source_kwargs(s), **task_kwargs("decoder", tok, t)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in fm.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_qlora_4bit_llama_fuses_in_training_with_checkpointing(tiny_path):
    quantization = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_path("llama"), quantization_config=quantization, device_map="cpu")
    import bitsandbytes as bnb

    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
    assert model.is_gradient_checkpointing
    lora = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")
    fm = get_flare_model(model, FlareConfig(fusion="add_relu"), lora)
    assert all(isinstance(s.layer.base_layer, bnb.nn.Linear4bit) for s in fm.plan.sites)
    assert {s.name.rsplit(".", 1)[-1] for s in fm.plan.sites} == {"q_proj", "v_proj"}
    randomize_lora(fm, scale=0.2)
    _check_source_branch(fm, AutoTokenizer.from_pretrained(tiny_path("llama")))

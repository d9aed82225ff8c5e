"""Decoders as the authors trained them (pnborchert/FLARE, run.py): the LM head, which writes the answer, trains
whole beside the LoRA, and so do Llama's input embeddings; a tied head (Gemma 2) is one matrix with the embeddings
and stays one, through stage 1's merge too. Encoders and encoder-decoders train their task heads only, and
``method.lora.modules_to_save`` says otherwise where wanted."""

from __future__ import annotations

import torch

from flare_ray.experiment.config import MethodSpec
from flare_ray.models.loading import load_model
from flare_ray.training.adapter import authors_modules, build_adapter
from flare_ray.training.setup import merge_stage1

IDS = torch.tensor([[1, 40, 41, 42, 43, 44]])


def untied_llama(tmp_path) -> str:
    """A tiny Llama whose LM head is its own matrix, as Llama 3.1 8B's is."""
    from transformers import AutoModelForCausalLM

    from flare_ray.models.tiny import _config, train_tokenizer

    config = _config("llama")
    config.tie_word_embeddings = False
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "llama")
    train_tokenizer("llama").save_pretrained(tmp_path / "llama")
    return str(tmp_path / "llama")


def whole(adapted) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters that are not LoRA's, by name."""
    return {n: p for n, p in adapted.named_parameters() if p.requires_grad and "lora_" not in n}


def step(adapted) -> None:
    adapted.train()
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    adapted(input_ids=IDS, labels=IDS).loss.backward()
    optimizer.step()


def test_llama_trains_its_lm_head_and_its_embeddings_beside_the_lora(tmp_path):
    model, _ = load_model(untied_llama(tmp_path), "decoder", labels=None)
    assert authors_modules(model) == ["lm_head", "embed_tokens"]
    frozen = model.lm_head.weight.detach().clone()
    adapted = build_adapter(model, MethodSpec(kind="lora", lora={"r": 4, "target_modules": "all-linear"}))
    trained = whole(adapted)
    assert sorted(trained) == [
        "base_model.model.lm_head.modules_to_save.default.weight",
        "base_model.model.model.embed_tokens.modules_to_save.default.weight",
    ]
    before = {n: p.detach().clone() for n, p in trained.items()}
    step(adapted)
    assert all(not torch.equal(p, before[n]) for n, p in trained.items())  # both train
    assert torch.equal(adapted.base_model.model.lm_head.original_module.weight, frozen)  # the base stays as it was
    none = build_adapter(
        load_model(untied_llama(tmp_path), "decoder", labels=None)[0],
        MethodSpec(kind="lora", lora={"r": 4, "modules_to_save": []}),
    )
    assert not whole(none)  # the LoRA alone, where the config says so


def test_a_tied_head_is_one_matrix_with_the_embeddings_and_stays_one_through_the_stage1_merge(tmp_path):
    model, _ = load_model("tiny:gemma2", "decoder", labels=None)
    assert model.config.tie_word_embeddings and authors_modules(model) == ["lm_head"]
    adapted = build_adapter(model, MethodSpec(kind="lora", lora={"r": 4}))
    trained = whole(adapted)
    assert len(trained) == 1  # the LM head's copy and the embeddings' are one parameter
    inner = adapted.base_model.model
    assert inner.lm_head.modules_to_save["default"].weight is inner.model.embed_tokens.modules_to_save["default"].weight
    step(adapted)
    adapted.eval()
    with torch.no_grad():
        logits = adapted(input_ids=IDS).logits
    adapted.save_pretrained(tmp_path / "stage1")

    merged = merge_stage1(load_model("tiny:gemma2", "decoder", labels=None)[0], tmp_path / "stage1").eval()
    assert merged.config.tie_word_embeddings and merged.lm_head.weight is merged.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=IDS).logits, logits, rtol=1e-5, atol=1e-5)


def test_encoders_and_encoder_decoders_train_their_task_heads_only():
    labels = ("positive", "neutral", "negative")
    for name, family in (("tiny:xlm-roberta", "encoder"), ("tiny:mt5", "encoder_decoder")):
        model, _ = load_model(name, family, labels=labels)
        assert authors_modules(model) == []
        names = whole(build_adapter(model, MethodSpec(kind="lora", lora={"r": 4})))
        assert names and all(".classifier." in n or ".classification_head." in n for n in names), sorted(names)

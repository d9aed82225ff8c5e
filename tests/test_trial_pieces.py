"""The pieces of a trial without Ray: the adapter each method builds, and re-scoring a saved checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel

from flare_ray.experiment import load_experiment
from flare_ray.fusion import FlareModel
from flare_ray.models.loading import load_model
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder
from flare_ray.training.adapter import NEEDS_SOURCE, build_adapter
from flare_ray.training.evaluate import score_checkpoint
from flare_ray.training.loop import TRIAL_CONFIG_NAME

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"


def experiment(tmp_path, *overrides):
    return load_experiment(QUICKSTART, [f"storage_path={tmp_path}", "task.max_records={test: 12}", *overrides])


@pytest.mark.parametrize("kind", ["flare", "lora"])
def test_method_builds_its_adapter(tmp_path, kind):
    config = experiment(tmp_path, f"method.kind={kind}", "method.lora.r=4", "search.space={}")
    model, _ = load_model(config.model.name_or_path, "encoder", labels=("positive", "neutral", "negative"))
    adapted = build_adapter(model, config.method)
    if kind == "lora":  # the baseline is peft's own LoRA model, nothing of FLARE
        assert isinstance(adapted, PeftModel) and not NEEDS_SOURCE[kind]
        peft_model = adapted
    else:
        assert isinstance(adapted, FlareModel) and adapted.config.fusion == config.method.flare.fusion
        peft_model = adapted.peft_model
    assert peft_model.peft_config["default"].r == 4 and peft_model.peft_config["default"].lora_alpha == 8


def test_a_saved_checkpoint_scores_like_the_trained_model(tmp_path):
    config = experiment(tmp_path, "method.flare.fusion=cross_attention")
    task = get_task(config.task.task_config("jav"))
    model, tokenizer = load_model(config.model.name_or_path, "encoder", labels=task.labels)
    adapted = build_adapter(model, config.method)
    with torch.no_grad():  # stand-in for training: move every trainable weight
        for p in adapted.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    checkpoint = tmp_path / "checkpoint"
    adapted.save_pretrained(checkpoint)
    (checkpoint / TRIAL_CONFIG_NAME).write_text(json.dumps({"experiment": config.model_dump(mode="json"), "language": "jav"}))

    records = task.load("test")
    encoder = TaskEncoder(task, tokenizer, "encoder", config.training.max_length)
    expected = task.score(encoder.predict(adapted.eval(), list(records)), records)
    scores = score_checkpoint(str(checkpoint))
    assert scores == {f"test/{k}": v for k, v in expected.items()}


def test_load_model_qlora_path():
    import bitsandbytes as bnb

    model, tokenizer = load_model("tiny:llama", "decoder", labels=None, quantization="4bit", gradient_checkpointing=True)
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert model.is_gradient_checkpointing and tokenizer.padding_side == "left"
    assert not any(p.requires_grad for p in model.parameters())  # k-bit preparation froze the base

"""The pieces of a trial without Ray: the adapter each method builds, and re-scoring a saved checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel

from flare_ray.experiment import load_experiment
from flare_ray.fusion import FlareModel
from flare_ray.models.loading import load_model, resolve_head
from flare_ray.search.trial import score_checkpoint
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder
from flare_ray.tasks.predictions import score_frame
from flare_ray.training.adapter import METHODS, build_adapter
from flare_ray.training.loop import TRIAL_CONFIG_NAME
from tests.helpers import QUICKSTART


def experiment(tmp_path, *overrides):
    return load_experiment(QUICKSTART, [f"storage_path={tmp_path}", "task.max_records={test: 12}", *overrides])


@pytest.mark.parametrize("kind", ["flare", "lora"])
def test_method_builds_its_adapter(tmp_path, kind):
    config = experiment(tmp_path, f"method.kind={kind}", "method.lora.r=4", "search.space={}")
    model, _ = load_model(config.model.name_or_path, "encoder", labels=("positive", "neutral", "negative"))
    adapted = build_adapter(model, config.method)
    if kind == "lora":  # the baseline is peft's own LoRA model, nothing of FLARE
        assert isinstance(adapted, PeftModel) and not METHODS[kind].source
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
    (checkpoint / TRIAL_CONFIG_NAME).write_text(
        json.dumps({"experiment": config.model_dump(mode="json"), "language": "jav"})
    )

    records = task.load("test")
    encoder = TaskEncoder(task, tokenizer, "encoder", config.training.max_length)
    expected = task.score(encoder.predict(adapted.eval(), list(records)), records)
    scores, predictions = score_checkpoint(str(checkpoint))
    assert scores == {f"test/{k}": v for k, v in expected.items()}
    assert score_frame(task, predictions) == expected and list(predictions["id"]) == list(records["id"])


def test_load_model_qlora_path():
    import bitsandbytes as bnb

    model, tokenizer = load_model(
        "tiny:llama", "decoder", labels=None, quantization="4bit", gradient_checkpointing=True
    )
    assert isinstance(model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    assert model.is_gradient_checkpointing and tokenizer.padding_side == "left"
    assert not any(p.requires_grad for p in model.parameters())  # k-bit preparation froze the base


@pytest.mark.parametrize("kind", ["flare", "lora"])
@pytest.mark.parametrize("task_name,language", [("nusax", "jav"), ("tydiqa", "sw")])
def test_mt5_task_head_trial_pieces_train_a_step_and_predict(tmp_path, kind, task_name, language):
    """model.head null gives mT5 a task head (the authors' code): the method's adapter trains it and the
    encoder, told the same head, encodes labels or spans for it and decodes its predictions."""
    config = experiment(tmp_path, f"method.kind={kind}", "method.lora.r=4", "search.space={}")
    task = get_task({"name": task_name, "language": language, "max_records": {"test": 6}})
    head = resolve_head("encoder_decoder", None)
    assert head == "task"
    model, tokenizer = load_model("tiny:mt5", "encoder_decoder", labels=task.labels, head=head)
    adapted = build_adapter(model, config.method)
    head_module = "qa_outputs" if task.labels is None else "classification_head"
    assert any(head_module in n for n, p in adapted.named_parameters() if p.requires_grad)
    encoder = TaskEncoder(
        task, tokenizer, "encoder_decoder", 64, source=METHODS[kind].source, generative=head == "generative"
    )
    records = list(task.load("test"))
    batch = encoder.train_batch(records).inputs
    assert ("start_positions" in batch) == (task.labels is None) and ("source_input_ids" in batch) == METHODS[
        kind
    ].source
    adapted.train()
    loss = adapted(**batch).loss
    loss.backward()
    assert torch.isfinite(loss)
    predictions = encoder.predict(adapted.eval(), records, batch_size=4)
    if task.labels:
        assert set(predictions) <= set(task.labels)
    else:
        assert all(p in r["target_context"] for p, r in zip(predictions, records))


def test_building_a_tiny_model_leaves_the_random_state_alone(tmp_path):
    """A trial that builds the tiny model on first use (a fresh machine) trains exactly as one that finds it."""
    from flare_ray.models.tiny import build_tiny_model

    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    build_tiny_model("xlm-roberta", tmp_path / "tiny")
    assert torch.equal(torch.rand(3), expected)


def test_a_loss_that_becomes_nan_stops_the_epoch_at_once(tmp_path):
    """The trial fails at the first non-finite loss, with the step and epoch in its reason (Tune then marks it
    errored, the MLflow callback tags its run with that reason, and selection leaves it out)."""
    from types import SimpleNamespace

    from flare_ray.training.engine import Engine, NonFiniteLoss
    from flare_ray.training.session import in_tune_trial

    class Diverging(torch.nn.Module):  # a model whose loss is finite once, then NaN
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))
            self.calls = 0

        def forward(self, x):
            self.calls += 1
            loss = (self.w * x).sum() * (float("nan") if self.calls > 1 else 1.0)
            return SimpleNamespace(loss=loss)

    config = experiment(tmp_path, "search.space={}")
    model = Diverging()
    with in_tune_trial():
        engine = Engine(model, config.training, config.scaling, total_steps=4, quantized=False)
        loader = [{"x": torch.ones(2)} for _ in range(4)]
        with pytest.raises(NonFiniteLoss, match="the training loss became nan at step 2 of epoch 1"):
            engine.train_epoch(_Loader(loader), 1)
    assert model.calls == 2  # stopped at once, not at the end of the epoch


class _Loader(list):
    sampler = None

"""Heads: task heads for encoders and mT5 (the authors' code), generative heads for decoders (the paper)."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoTokenizer

from flare_ray.fusion import untrained_task_heads
from flare_ray.models.loading import load_model, resolve_head
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder


def test_resolve_head_defaults_and_impossible_heads():
    assert resolve_head("encoder", None) == "task"
    assert resolve_head("encoder_decoder", None) == "task"
    assert resolve_head("decoder", None) == "generative"
    assert resolve_head("encoder_decoder", "generative") == "generative"
    assert resolve_head("encoder", "task") == "task"
    with pytest.raises(ValueError, match="an encoder .XLM-R. has none"):
        resolve_head("encoder", "generative")
    with pytest.raises(ValueError, match="not supported for decoders"):
        resolve_head("decoder", "task")
    with pytest.raises(ValueError, match="model.head: 'span'"):
        resolve_head("encoder", "span")


@pytest.mark.parametrize(
    "labels,head,cls",
    [
        (("positive", "neutral", "negative"), None, "MT5ForSequenceClassification"),
        (None, "task", "MT5ForQuestionAnswering"),
        (("positive", "neutral", "negative"), "generative", "MT5ForConditionalGeneration"),
    ],
)
def test_load_model_gives_mt5_the_head_asked_for(tiny_path, labels, head, cls):
    model, _ = load_model(str(tiny_path("mt5")), "encoder_decoder", labels=labels, head=head)
    assert type(model).__name__ == cls
    if labels and head is None:
        assert model.config.id2label == dict(enumerate(labels)) and model.config.num_labels == 3
    with pytest.raises(ValueError, match="an encoder .XLM-R. has none"):
        load_model(str(tiny_path("xlm-roberta")), "encoder", labels=labels, head="generative")


def _lora(model, task_type):
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=8, task_type=task_type, modules_to_save=untrained_task_heads(model) or None)
    return get_peft_model(model, config)


@pytest.mark.parametrize("task_name,language", [("nusax", "jav"), ("xnli", "sw"), ("tydiqa", "sw")])
def test_mt5_with_a_task_head_trains_and_predicts(tiny_path, task_name, language):
    task = get_task({"name": task_name, "language": language, "max_records": {"test": 8}})
    records = list(task.load("test"))
    torch.manual_seed(0)
    model, tok = load_model(str(tiny_path("mt5")), "encoder_decoder", labels=task.labels, head="task")
    qa = task.labels is None
    adapted = _lora(model, TaskType.QUESTION_ANS if qa else TaskType.SEQ_CLS)
    head = "qa_outputs" if qa else "classification_head"
    trainable = [n for n, p in adapted.named_parameters() if p.requires_grad]
    assert any(head in n for n in trainable) and any("lora_A" in n for n in trainable)  # peft trains the head

    encoder = TaskEncoder(task, tok, "encoder_decoder", 64, source=False, generative=False)
    assert not encoder.generative
    batch = encoder.train_batch(records).inputs
    if qa:  # span labels, as for encoders: start <= end, inside the context, or (0, 0) when cut off
        assert set(batch) == {"input_ids", "attention_mask", "start_positions", "end_positions"}
        assert torch.all(batch["start_positions"] <= batch["end_positions"])
    else:
        assert batch["labels"].tolist() == [task.labels.index(r["label"]) for r in records]
        eos = (batch["input_ids"] == tok.eos_token_id).sum(1)
        assert eos.tolist() == [len(task.text_fields)] * len(records)  # one eos per segment, in every row
    before = {n: p.detach().clone() for n, p in adapted.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW([p for p in adapted.parameters() if p.requires_grad], lr=1e-2)
    adapted.train()
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = adapted(**batch).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    moved = {n for n, p in adapted.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    assert any(head in n for n in moved)

    predictions = encoder.predict(adapted.eval(), records, batch_size=4)
    assert len(predictions) == len(records)
    if qa:
        assert all(p in r["target_context"] for p, r in zip(predictions, records))
    else:
        assert set(predictions) <= set(task.labels)
    scores = task.score(predictions, task.load("test"))
    assert 0.0 <= scores[task.primary_metric] <= 100.0


def test_task_encoder_head_defaults_follow_the_family(tiny_path):
    task = get_task({"name": "nusax", "language": "jav"})
    mt5 = AutoTokenizer.from_pretrained(tiny_path("mt5"))
    llama = AutoTokenizer.from_pretrained(tiny_path("llama"))
    xlmr = AutoTokenizer.from_pretrained(tiny_path("xlm-roberta"))
    assert TaskEncoder(task, mt5, "encoder_decoder", 64).head == "task"
    assert TaskEncoder(task, mt5, "encoder_decoder", 64, generative=True).head == "generative"
    assert TaskEncoder(task, llama, "decoder", 64).generative
    with pytest.raises(ValueError, match="an encoder .XLM-R. has none"):
        TaskEncoder(task, xlmr, "encoder", 64, generative=True)


def test_unequal_eos_counts_are_refused_for_mt5_classification(tiny_path):
    task = get_task({"name": "nusax", "language": "jav", "max_records": {"test": 2}})
    records = list(task.load("test"))
    records[0] = {**records[0], "target_text": records[0]["target_text"] + " </s> more"}
    tok = AutoTokenizer.from_pretrained(tiny_path("mt5"))
    with pytest.raises(ValueError, match=r"same number of eos tokens .* \[2, 1\]"):
        TaskEncoder(task, tok, "encoder_decoder", 64, generative=False).train_batch(records)

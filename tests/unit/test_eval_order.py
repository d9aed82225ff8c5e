"""The evaluation's cheaper passes (issue 31, goodput): batches of rows of similar length, and a task head's metric
and loss from one pass.

On tiny models (no Ray): :func:`~flare_ray.training.evaluate.length_order` puts the longest rows first (the source
counts where the encoder reads it); the evaluation's predictions come back in the records' order and equal those of
a plain pass in that order, and its loss equals a plain loop's (each batch's mean, weighted by its rows) within
1e-6 (relative: float32 sums), for a FLARE classifier, an extractive QA head and a generative decoder (whose loss keeps its own pass)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch

from flare_ray.models.loading import load_model
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder
from flare_ray.training.evaluate import evaluate, length_order, mean_loss, predict_records
from tests.helpers import flare, load_base, randomize_lora

TRAINING = SimpleNamespace(eval_batch_size=4, max_new_tokens=4)  # batches of 4: several, the last one short


def _plain(encoder: TaskEncoder, model, records: list) -> tuple[list, float]:
    """Predictions and mean loss as the evaluation computed them before: records in order, two passes."""
    predictions = encoder.predict(model, records, batch_size=TRAINING.eval_batch_size, max_new_tokens=4)
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(records), TRAINING.eval_batch_size):
            rows = records[start : start + TRAINING.eval_batch_size]
            total += model(**encoder.train_batch(rows).inputs).loss.item() * len(rows)
    return predictions, total / len(records)


def test_length_order_puts_the_longest_rows_first_and_reads_the_source_where_the_encoder_does(tiny_path):
    task = get_task({"name": "nusax", "language": "jav"})
    _, tok = load_base(tiny_path, "encoder")
    rows = [
        {"id": "a", "target_text": "ab", "source_text": "a much longer source text"},
        {"id": "b", "target_text": "abcdefgh", "source_text": "x"},
        {"id": "c", "target_text": "abcd", "source_text": "y"},
        {"id": "d", "target_text": "abcd", "source_text": "z"},
    ]
    assert length_order(TaskEncoder(task, tok, "encoder", 64, source=False), rows) == [1, 2, 3, 0]  # ties: in order
    assert length_order(TaskEncoder(task, tok, "encoder", 64, source=True), rows) == [0, 1, 2, 3]


def test_predictions_are_made_longest_first_and_returned_in_the_records_order(tiny_path):
    task = get_task({"name": "nusax", "language": "jav", "max_records": {"test": 14}})
    records = list(task.load("test"))
    _, tok = load_base(tiny_path, "encoder")
    encoder = TaskEncoder(task, tok, "encoder", 64, source=True)
    seen = []

    def predict(model, rows, **kwargs):  # each row's prediction: its id
        seen.extend(rows)
        return [row["id"] for row in rows]

    encoder.predict = predict
    assert predict_records(encoder, torch.nn.Linear(1, 1), records, TRAINING) == [r["id"] for r in records]
    longest = [max(len(r["target_text"]), len(r["source_text"])) for r in seen]
    assert longest == sorted(longest, reverse=True) and seen != records


def test_one_pass_of_a_flare_classifier_gives_the_plain_predictions_in_order_and_loss(tiny_path):
    task = get_task({"name": "nusax", "language": "jav", "max_records": {"test": 14}})
    records = task.load("test")
    model, tok = flare(tiny_path, "encoder", lora={"r": 4, "target_modules": ["query", "value"]})
    randomize_lora(model)
    with torch.no_grad():  # a head that tells the rows apart (the tiny model's own says one label for all)
        for name, p in model.named_parameters():
            if "classifier" in name:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(3)) * 4)
    encoder = TaskEncoder(task, tok, "encoder", 64, source=True)
    lengths = [len(r["target_text"]) for r in records]
    assert lengths != sorted(lengths, reverse=True)  # the sorted order is another one: the test can tell
    predictions, loss = _plain(encoder, model, list(records))
    assert len(set(predictions)) > 1  # the rows' predictions differ: an order mix-up would show
    scores, frame = evaluate(task, encoder, model, records, TRAINING, "validation", 1, loss=True)
    assert list(frame["id"]) == list(records["id"])
    assert list(frame["prediction"]) == predictions
    assert math.isclose(scores["loss"], loss, rel_tol=1e-6)
    assert scores == {**task.score(predictions, records), "loss": scores["loss"]}
    assert math.isclose(mean_loss(encoder, model, records, TRAINING.eval_batch_size, "cpu"), loss, rel_tol=1e-6)


def test_one_pass_of_an_extractive_qa_head_gives_the_plain_answers_and_loss(tiny_path):
    task = get_task({"name": "tydiqa", "language": "sw", "max_records": {"test": 9}})
    records = task.load("test")
    torch.manual_seed(0)  # the span head is freshly initialised
    model, tok = load_model(str(tiny_path("xlm-roberta")), "encoder", labels=None, head="task")
    model.eval()
    encoder = TaskEncoder(task, tok, "encoder", 64, source=False)
    predictions, loss = _plain(encoder, model, list(records))
    scores, frame = evaluate(task, encoder, model, records, TRAINING, "test", 0, loss=True)
    assert list(frame["prediction"]) == predictions
    assert math.isclose(scores["loss"], loss, rel_tol=1e-6)


def test_a_generative_decoder_predicts_in_length_order_and_keeps_its_loss_pass(tiny_path):
    task = get_task({"name": "nusax", "language": "jav", "max_records": {"test": 6}})
    records = task.load("test")
    model, tok = load_base(tiny_path, "decoder")
    encoder = TaskEncoder(task, tok, "decoder", 64, source=False, answer_tokens=4)
    predictions, loss = _plain(encoder, model, list(records))
    assert predict_records(encoder, model, records, TRAINING) == predictions
    scores, _ = evaluate(task, encoder, model, records, TRAINING, "validation", 1, loss=True)
    assert scores["loss"] == loss  # a token mean per batch: its batches keep the records' order

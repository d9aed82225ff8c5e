"""``predict --scores``: how sure each prediction is, from the logits of the evaluation's own prediction pass.

On tiny models (no adapter, no Ray): the predictions with scores are the evaluation's
(:meth:`~flare_ray.tasks.encoding.TaskEncoder.predict`), a classification's probabilities sum to 1 with the
predicted label the most probable, an extractive answer's score is its probability among the context's
candidate spans. (Through the command, on a real sweep's adapter: ``e2e/test_predict.py``.)"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from flare_ray.models.loading import load_model
from flare_ray.predict.scores import MAX_ANSWER_TOKENS, scored_predictions
from flare_ray.predict.tables import PredictError
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder

TRAINING = SimpleNamespace(eval_batch_size=3)  # batches of 3: the last one short


def _setup(tiny_path, name: str, language: str):
    task = get_task({"name": name, "language": language, "max_records": {"test": 7}})
    torch.manual_seed(0)
    model, tok = load_model(str(tiny_path("xlm-roberta")), "encoder", labels=task.labels, head="task")
    return task, list(task.load("test")), model.eval(), TaskEncoder(task, tok, "encoder", 64, source=False)


def test_class_probabilities_sum_to_one_and_the_prediction_is_the_most_probable(tiny_path):
    task, records, model, encoder = _setup(tiny_path, "xnli", "sw")
    predictions, scores = scored_predictions(encoder, model, records, TRAINING)
    assert predictions == encoder.predict(model, records, batch_size=TRAINING.eval_batch_size)
    assert list(scores.columns) == [f"p_{label}" for label in task.labels] and len(scores) == len(records)
    assert torch.allclose(torch.tensor(scores.sum(axis=1).to_numpy()), torch.ones(len(records), dtype=torch.float64))
    assert [task.labels[i] for i in scores.to_numpy().argmax(axis=1)] == predictions
    assert scores.nunique().max() > 1  # the rows differ: the scores are each row's own


def test_an_answer_scores_its_probability_among_the_candidate_spans(tiny_path):
    task, records, model, encoder = _setup(tiny_path, "tydiqa", "sw")
    predictions, scores = scored_predictions(encoder, model, records, TRAINING)
    assert predictions == encoder.predict(model, records, batch_size=TRAINING.eval_batch_size)
    assert list(scores.columns) == ["score"] and len(scores) == len(records)
    batch = encoder.predict_batch(records)
    with torch.no_grad():
        out = model(**batch.inputs)
    for i, (score, meta) in enumerate(zip(scores["score"], batch.meta)):
        # the best of the candidate spans (start <= end within the context, shorter than the limit) is at least
        # as probable as a uniform choice among them, and at most certain
        context = [
            t for t, s in enumerate(meta["sequence_ids"]) if s == 1 and meta["offsets"][t][0] != meta["offsets"][t][1]
        ]
        n = sum(
            1
            for a in range(len(context))
            for b in range(a, len(context))
            if context[b] - context[a] < MAX_ANSWER_TOKENS
        )
        assert 1 / n <= score <= 1, (i, score, n)
        # and it is the softmax of start + end logits over those spans
        idx = torch.tensor(context)
        grid = out.start_logits[i][idx][:, None] + out.end_logits[i][idx][None, :]
        length = idx[None, :] - idx[:, None]
        valid = grid[(length >= 0) & (length < MAX_ANSWER_TOKENS)]
        assert score == pytest.approx(float(valid.max().exp() / valid.exp().sum()), rel=1e-5)


def test_a_generative_head_gives_no_scores(tiny_path):
    task = get_task({"name": "nusax", "language": "jav"})
    _, tok = load_model(str(tiny_path("llama")), "decoder", labels=task.labels)
    encoder = TaskEncoder(task, tok, "decoder", 64, source=False)
    assert encoder.generative
    with pytest.raises(PredictError, match=r"^--scores: this model writes its answers with its LM head"):
        scored_predictions(encoder, None, [], TRAINING)

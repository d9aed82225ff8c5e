"""How sure a prediction is (``predict --scores``): the class probabilities of a classification head, and the
probability of an extractive QA head's answer among the context's candidate spans.

One pass of the model, batched as the evaluation batches (:meth:`~flare_ray.tasks.encoding.TaskEncoder.predict`):
the prediction is the evaluation's (the argmax label; the best-scoring span, start <= end, at most 30 tokens,
within the context), and its scores come from the same logits."""

from __future__ import annotations

from typing import Any, Sequence

import pandas as pd
import torch

from flare_ray.tasks.encoding import TaskEncoder

from .inputs import score_columns
from .tables import PredictError

MAX_ANSWER_TOKENS = 30  # as the evaluation's span search


@torch.no_grad()
def scored_predictions(encoder: TaskEncoder, model, records, training) -> tuple[list, pd.DataFrame]:
    """``model``'s prediction of each record and its scores: ``p_<label>`` per label (softmax of the logits,
    summing to 1 per row) or ``score`` (QA: the softmax, over every candidate span of the context, of the
    answer's start + end logit). :class:`PredictError` for a generative head (no scores are given for
    generated text)."""
    if encoder.generative:
        raise PredictError(
            "--scores: this model writes its answers with its LM head (model.head generative); scores are given "
            "for task heads (classification probabilities, extractive QA span scores): run without --scores"
        )
    rows = list(records)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    predictions: list = []
    scores: list[list[float | None]] = []
    labels = encoder.task.labels
    for start in range(0, len(rows), training.eval_batch_size):
        batch = encoder.predict_batch(rows[start : start + training.eval_batch_size])
        outputs = model(**{k: v.to(device) for k, v in batch.inputs.items()})
        if labels:
            probabilities = outputs.logits.float().softmax(-1).cpu()
            predictions += [labels[i] for i in outputs.logits.argmax(-1).tolist()]
            scores += probabilities.tolist()
        else:
            for s, e, meta in zip(outputs.start_logits.cpu(), outputs.end_logits.cpu(), batch.meta):
                text, probability = best_span(s, e, meta)
                predictions.append(text)
                scores.append([probability])
    model.train(was_training)
    return predictions, pd.DataFrame(scores, columns=score_columns(encoder.task))


def best_span(start_logits, end_logits, meta: dict[str, Any], max_answer_tokens: int = MAX_ANSWER_TOKENS):
    """The best-scoring context span (start <= end, within the context, shorter than ``max_answer_tokens``) as
    a string, and its probability among all such spans (None: no context token survived truncation)."""
    context: Sequence[int] = [
        i for i, s in enumerate(meta["sequence_ids"]) if s == 1 and meta["offsets"][i][0] != meta["offsets"][i][1]
    ]
    if not context:
        return "", None
    idx = torch.tensor(context)
    scores = start_logits[idx][:, None] + end_logits[idx][None, :]
    length = idx[None, :] - idx[:, None]
    scores = scores.masked_fill((length < 0) | (length >= max_answer_tokens), float("-inf")).flatten()
    best = int(scores.argmax())
    s, e = context[best // len(idx)], context[best % len(idx)]
    return meta["context"][meta["offsets"][s][0] : meta["offsets"][e][1]], float(scores.float().softmax(0)[best])

"""Is the best row really better? A paired bootstrap over the test examples, seeds pooled.

:func:`paired_bootstrap` compares two systems (rows of the report) on one language, each given as its
seeds' per-example test predictions (``predictions/test.parquet``). The examples both were scored on
(matched by ``id``) are resampled with replacement ``resamples`` times, the same resample for both
systems and all their seeds. On each resample each system's score is the task metric (accuracy, macro
F1, exact match or F1, on the resampled examples) averaged over its seeds, and the p-value is the
share of resamples in which the first system does not beat the second, ``(1 + #{δ* <= 0}) / (1 + R)``
(Koehn 2004; the add-one keeps a p-value from being 0 with finitely many resamples). Identical
predictions give p = 1; a system right on every example the other gets wrong gives p = 1 / (1 + R).
The generator is seeded, so the p-value is the same on every run.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

RESAMPLES = 1000
SEED = 0
LEVEL = 0.05  # the marker's significance level
PROCEDURE = (
    "paired bootstrap over test examples (Koehn 2004): {resamples} resamples of the examples with replacement, "
    "the same for both rows and all their seeds; each row's score is the metric averaged over its seeds; "
    "p = (1 + #{{resamples where the best row does not beat the other}}) / (1 + {resamples}); seed {seed}; "
    "* marks p < {level}"
)


def paired_bootstrap(
    best: Sequence[pd.DataFrame],
    other: Sequence[pd.DataFrame],
    metric: str,
    labels: Sequence[str] = (),
    resamples: int = RESAMPLES,
    seed: int = SEED,
    mode: str = "max",
) -> float:
    """The p-value that the system with the seeds' predictions ``best`` is not better than ``other``."""
    frames = [f.drop_duplicates("id").set_index("id") for f in (*best, *other)]
    ids = frames[0].index
    for f in frames[1:]:
        ids = ids.intersection(f.index, sort=False)
    if len(ids) == 0:
        raise ValueError("the two systems share no scored example")
    weights = np.random.default_rng(seed).multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=resamples)
    scores = [resampled_scores(f.loc[ids], metric, weights, labels) for f in frames]
    delta = np.mean(scores[: len(best)], axis=0) - np.mean(scores[len(best) :], axis=0)
    if mode != "max":
        delta = -delta
    return float((1 + np.sum(delta <= 0)) / (1 + resamples))


def resampled_scores(frame: pd.DataFrame, metric: str, weights: np.ndarray, labels: Sequence[str] = ()) -> np.ndarray:
    """``metric`` of one system on each resample; ``weights[r, i]``: how often resample r draws example i.
    Equal to the task's own scoring (:mod:`flare_ray.tasks.metrics`) for a weight of one per example."""
    n = weights.sum(axis=1)
    if metric == "accuracy":
        return 100.0 * weights @ frame["correct"].to_numpy(float) / n
    if metric in ("exact_match", "f1"):  # SQuAD's per-example scores are already in percent
        return weights @ frame[metric].to_numpy(float) / n
    if metric == "macro_f1":
        gold, predicted = frame["gold"].to_numpy(object), frame["prediction"].to_numpy(object)
        f1 = []
        for label in labels or sorted(set(gold)):
            tp = weights @ ((predicted == label) & (gold == label))
            fp = weights @ ((predicted == label) & (gold != label))
            fn = weights @ ((predicted != label) & (gold == label))
            denominator = 2 * tp + fp + fn
            f1.append(np.divide(2 * tp, denominator, out=np.zeros(len(weights)), where=denominator > 0))
        return 100.0 * np.mean(f1, axis=0)
    raise ValueError(f"no per-example form of the metric {metric!r}; expected accuracy, macro_f1, exact_match or f1")

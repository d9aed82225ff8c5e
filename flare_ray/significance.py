"""Is one row really better than another? A paired bootstrap over the test examples, seeds pooled; and
Holm's correction of a column's p-values.

Two systems (rows of the report) on one language are each given as their seeds' per-example test
predictions (``predictions/test.parquet``). The examples both were scored on (matched by ``id``) are
resampled with replacement ``resamples`` times, the same resample for both systems and all their seeds
(:func:`resampled_differences`). On each resample each system's score is the task metric (accuracy, macro
F1, exact match or F1, on the resampled examples) averaged over its seeds, and δ* is the first system's
score minus the second's. From these:

* :func:`paired_bootstrap`, the p-value of "the first system is not better": the share of resamples in
  which it does not beat the second, ``(1 + #{δ* <= 0}) / (1 + R)`` (Koehn 2004; the add-one keeps a
  p-value from being 0 with finitely many resamples). Identical predictions give p = 1; a system right on
  every example the other gets wrong gives p = 1 / (1 + R).
* :func:`difference`, the difference Δ itself (on all shared examples, the seeds' mean), its percentile
  95 % confidence interval (the 2.5th and 97.5th percentiles of δ*), and the two-sided p-value of Δ = 0,
  ``min(1, 2 (1 + min(#{δ* <= 0}, #{δ* >= 0})) / (1 + R))``: the interval excludes 0 about when p < 0.05.
* :func:`holm`, Holm's step-down correction of the p-values of one column (one family of comparisons).

The average over languages (the report's ``average`` column) is compared the same way, stratified
(:func:`stratified_differences`, :func:`stratified_paired_bootstrap`, :func:`stratified_difference`): each
language is a :class:`Stratum`, each resample draws every language's examples with replacement within that
language, each system's score on it is its metric per language (seeds pooled; a macro F1 recomputed from the
resampled examples, not a mean of per-example scores) averaged over the languages. Examples are never paired
across languages, even where their ids coincide. One language is one stratum: the per-language functions are
the stratified ones with one stratum, on the same resamples.

The generator is seeded, so every number is the same on every run.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd

RESAMPLES = 1000
SEED = 0
LEVEL = 0.05  # the marker's significance level
CONFIDENCE = 0.95  # of the interval of a difference
PROCEDURE = (
    "paired bootstrap over test examples (Koehn 2004): {resamples} resamples of the examples with replacement, "
    "the same for both rows and all their seeds; each row's score is the metric averaged over its seeds; "
    "p = (1 + #{{resamples where the best row does not beat the other}}) / (1 + {resamples}); seed {seed}"
)


class Difference(NamedTuple):
    """``delta``: the first system's score minus the second's; ``low``, ``high``: its confidence interval;
    ``p``: the two-sided p-value of no difference."""

    delta: float
    low: float
    high: float
    p: float


class Stratum(NamedTuple):
    """One language of an average over languages: each system's seeds' per-example predictions on it, and the
    task's metric there (``labels``: the classes of a macro F1)."""

    first: Sequence[pd.DataFrame]
    second: Sequence[pd.DataFrame]
    metric: str
    labels: Sequence[str] = ()


def resampled_differences(
    first: Sequence[pd.DataFrame],
    second: Sequence[pd.DataFrame],
    metric: str,
    labels: Sequence[str] = (),
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, np.ndarray]:
    """The difference of the seed-mean scores, ``first`` - ``second``, on the examples both were scored on,
    and the same difference on each of ``resamples`` resamples of those examples (the same for every seed)."""
    return stratified_differences([Stratum(first, second, metric, labels)], resamples, seed)


def stratified_differences(
    strata: Sequence[Stratum], resamples: int = RESAMPLES, seed: int = SEED
) -> tuple[float, np.ndarray]:
    """The difference of the two systems' scores averaged over ``strata`` (languages), and the same on each of
    ``resamples`` stratified resamples. Each resample draws every stratum's shared examples with replacement,
    within that stratum alone (one generator seeded ``seed``, the strata in order, the same draws for both systems
    and all their seeds); a system's score on it is, per stratum, the stratum's metric averaged over its seeds,
    then the mean over the strata. One stratum is the unstratified bootstrap of one language."""
    if not strata:
        raise ValueError("no stratum to compare the two systems on")
    rng = np.random.default_rng(seed)
    delta, deltas = 0.0, np.zeros(resamples)
    for stratum in strata:
        frames = [f.drop_duplicates("id").set_index("id") for f in (*stratum.first, *stratum.second)]
        ids = frames[0].index
        for f in frames[1:]:
            ids = ids.intersection(f.index, sort=False)
        if len(ids) == 0:
            raise ValueError("the two systems share no scored example")
        weights = rng.multinomial(len(ids), np.full(len(ids), 1.0 / len(ids)), size=resamples)
        ones = np.ones((1, len(ids)), dtype=int)
        scores, observed = [], []
        for f in frames:
            scores.append(resampled_scores(f.loc[ids], stratum.metric, weights, stratum.labels))
            observed.append(resampled_scores(f.loc[ids], stratum.metric, ones, stratum.labels)[0])
        k = len(stratum.first)
        delta += float(np.mean(observed[:k]) - np.mean(observed[k:]))
        deltas = deltas + np.mean(scores[:k], axis=0) - np.mean(scores[k:], axis=0)
    return delta / len(strata), deltas / len(strata)


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
    return stratified_paired_bootstrap([Stratum(best, other, metric, labels)], resamples, seed, mode)


def stratified_paired_bootstrap(
    strata: Sequence[Stratum], resamples: int = RESAMPLES, seed: int = SEED, mode: str = "max"
) -> float:
    """The p-value that the first system of ``strata`` is not better than the second on the average over the
    strata, from :func:`stratified_differences`."""
    _, deltas = stratified_differences(strata, resamples, seed)
    if mode != "max":
        deltas = -deltas
    return float((1 + np.sum(deltas <= 0)) / (1 + resamples))


def difference(
    system: Sequence[pd.DataFrame],
    baseline: Sequence[pd.DataFrame],
    metric: str,
    labels: Sequence[str] = (),
    resamples: int = RESAMPLES,
    seed: int = SEED,
    confidence: float = CONFIDENCE,
) -> Difference:
    """Δ = ``system`` - ``baseline`` (each its seeds' per-example predictions), its paired-bootstrap
    percentile interval at ``confidence``, and the two-sided p-value of Δ = 0."""
    return stratified_difference([Stratum(system, baseline, metric, labels)], resamples, seed, confidence)


def stratified_difference(
    strata: Sequence[Stratum], resamples: int = RESAMPLES, seed: int = SEED, confidence: float = CONFIDENCE
) -> Difference:
    """Δ = the first system's score averaged over ``strata`` minus the second's, its percentile interval at
    ``confidence`` over the stratified resamples of :func:`stratified_differences`, and the two-sided p-value."""
    delta, deltas = stratified_differences(strata, resamples, seed)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(deltas, [tail, 100 - tail])
    p = min(1.0, 2 * (1 + min(np.sum(deltas <= 0), np.sum(deltas >= 0))) / (1 + resamples))
    return Difference(delta, float(low), float(high), float(p))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment of one family of p-values (NaN: no comparison, kept NaN, not counted):
    the i-th smallest of m becomes ``max_{j <= i} min(1, (m - j + 1) p_(j))``; reject where it is < the level."""
    present = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    out = [math.nan] * len(p_values)
    running, m = 0.0, len(present)
    for rank, (p, i) in enumerate(sorted(present)):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


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

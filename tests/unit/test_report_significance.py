"""The report's statistics, against hand computations: the difference to a baseline row with its paired-bootstrap
95 % interval and two-sided p-value (:func:`flare_ray.significance.difference`), and Holm's correction of
a column's p-values (:func:`flare_ray.significance.holm`)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from flare_ray.significance import difference, holm, paired_bootstrap, resampled_differences


def system(correct: list[int], ids: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"id": ids or [f"e{i}" for i in range(len(correct))], "correct": [float(c) for c in correct]})


def test_the_difference_and_its_interval_are_the_hand_computed_bootstrap():
    """Two seeds per system, eight examples, accuracy: Δ, the percentile interval and p computed by hand on the
    same resamples (each resample: which examples, drawn with replacement; the same for all four seeds)."""
    a = [system([1, 1, 0, 1, 1, 0, 1, 1]), system([1, 0, 1, 1, 1, 0, 1, 1])]
    b = [system([0, 1, 0, 1, 0, 0, 1, 0]), system([1, 0, 0, 1, 0, 0, 1, 0])]
    resamples, seed, n = 400, 11, 8
    # On all examples: a's seeds score 75 and 75, b's 37.5 and 37.5: Δ = 37.5.
    got = difference(a, b, "accuracy", resamples=resamples, seed=seed)
    assert got.delta == pytest.approx(37.5)
    counts = np.random.default_rng(seed).multinomial(n, [1 / n] * n, size=resamples)  # the resamples drawn
    deltas = []
    for count in counts:
        drawn = [i for i in range(n) for _ in range(count[i])]  # example i, count[i] times

        def accuracy(frames):
            return sum(100 * sum(f["correct"][i] for i in drawn) / len(drawn) for f in frames) / len(frames)

        deltas.append(accuracy(a) - accuracy(b))
    below, above = sum(d <= 0 for d in deltas), sum(d >= 0 for d in deltas)
    assert got.low == pytest.approx(np.percentile(deltas, 2.5)) and got.high == pytest.approx(
        np.percentile(deltas, 97.5)
    )
    assert got.p == pytest.approx(min(1.0, 2 * (1 + min(below, above)) / (1 + resamples)))
    assert got.low < got.delta < got.high


def test_an_interval_excludes_zero_where_one_row_is_clearly_better_and_contains_it_where_neither_is():
    rng = np.random.default_rng(0)
    n = 300
    truth = rng.random(n)
    better = [system(list((truth < 0.80) | (rng.random(n) < 0.1))) for _ in range(3)]
    worse = [system(list((truth < 0.55) & (rng.random(n) < 0.95))) for _ in range(3)]
    clear = difference(better, worse, "accuracy", resamples=1000, seed=0)
    assert clear.delta > 20 and 0 < clear.low < clear.delta < clear.high and clear.p < 0.01
    assert difference(worse, better, "accuracy", resamples=1000, seed=0).high < 0  # the other way round: below 0
    alike = [system(list(rng.random(n) < 0.6)) for _ in range(3)], [system(list(rng.random(n) < 0.6)) for _ in range(3)]
    close = difference(*alike, "accuracy", resamples=1000, seed=0)
    assert close.low < 0 < close.high and close.p > 0.05
    # All right against all wrong: every resample differs by 100, the interval is that point, p its smallest.
    right, wrong = [system([1] * 20)], [system([0] * 20)]
    assert tuple(difference(right, wrong, "accuracy", resamples=99, seed=0)) == (100.0, 100.0, 100.0, 2 / 100)


def test_the_difference_pairs_examples_by_id_and_shares_its_resamples_with_the_p_value_against_the_best():
    a = system([1, 1, 1, 0], ids=["w", "x", "y", "z"])
    b = system([0, 1, 0, 0, 1], ids=["z", "y", "x", "w", "only-b"])  # shuffled, one example a has no score for
    assert difference([a], [b], "accuracy", resamples=10).delta == pytest.approx(75 - 25)  # on w, x, y, z
    delta, deltas = resampled_differences([a], [b], "accuracy", resamples=200, seed=5)
    assert paired_bootstrap([a], [b], "accuracy", resamples=200, seed=5) == (1 + np.sum(deltas <= 0)) / 201


def test_holm_against_a_hand_computation():
    # m = 4 (the NaN is no comparison): sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04,
    # each at least the one before it: 0.02, 0.03, 0.06, 0.06.
    adjusted = holm([0.01, 0.04, 0.03, math.nan, 0.005])
    assert adjusted[:3] + adjusted[4:] == pytest.approx([0.03, 0.06, 0.06, 0.02]) and math.isnan(adjusted[3])
    assert holm([0.5, 0.6]) == [1.0, 1.0]  # capped at 1
    assert holm([0.2]) == [0.2] and holm([]) == [] and math.isnan(holm([math.nan])[0])

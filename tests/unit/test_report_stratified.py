"""The average column's significance: a paired bootstrap stratified by language
(:func:`flare_ray.significance.stratified_difference`, :func:`~flare_ray.significance.stratified_paired_bootstrap`)
against a hand computation, its interval where one row is better on average and where the languages cancel out,
and the average column of real report tables (p against the best, Δ vs the baseline with its interval, Holm, ‡)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from sklearn.metrics import f1_score

from flare_ray.cli.report import main
from flare_ray.report import load_sweep
from flare_ray.report.build import _notes
from flare_ray.report.render import markdown
from flare_ray.report.table import AVERAGE, cells
from flare_ray.significance import Stratum, difference, holm, stratified_difference, stratified_paired_bootstrap
from tests.unit.test_report import LABELS, random_frame, records
from tests.unit.test_report_baseline import with_predictions
from tests.unit.test_report_paper import sweep


def hand_deltas(strata: list[Stratum], resamples: int, seed: int) -> tuple[float, np.ndarray]:
    """The stratified bootstrap written out: per language in order, ``resamples`` draws of its examples with
    replacement (one generator); on each, a system's score is its metric (recomputed from the drawn examples,
    macro F1 by scikit-learn) per language averaged over its seeds, then the mean over languages."""

    def score(frame: pd.DataFrame, drawn: np.ndarray, metric: str) -> float:
        if metric == "accuracy":
            return 100 * frame["correct"].to_numpy()[drawn].mean()
        gold, predicted = frame["gold"].to_numpy()[drawn], frame["prediction"].to_numpy()[drawn]
        return 100 * f1_score(gold, predicted, labels=list(LABELS), average="macro", zero_division=0)

    rng = np.random.default_rng(seed)
    observed, deltas = [], []
    for stratum in strata:
        n = len(stratum.first[0])
        everything = np.arange(n)
        counts = rng.multinomial(n, [1 / n] * n, size=resamples)
        mean = lambda frames, drawn: np.mean([score(f, drawn, stratum.metric) for f in frames])  # noqa: E731
        observed.append(mean(stratum.first, everything) - mean(stratum.second, everything))
        deltas.append(
            [
                mean(stratum.first, drawn) - mean(stratum.second, drawn)
                for drawn in (np.repeat(everything, c) for c in counts)
            ]
        )
    return float(np.mean(observed)), np.mean(deltas, axis=0)


def test_the_stratified_average_is_the_hand_computed_bootstrap():
    """Two languages of different sizes and metrics whose examples share their ids (NusaX's are parallel): each
    resample draws within each language, never across; Δ, its interval, its p and the p against the best are
    those of the hand computation on the same draws."""
    jav = Stratum(
        [random_frame(12, 0.8, seed=1, gold_seed=0), random_frame(12, 0.7, seed=2, gold_seed=0)],
        [random_frame(12, 0.5, seed=3, gold_seed=0)],
        "macro_f1",
        LABELS,
    )
    sun = Stratum(
        [random_frame(9, 0.6, seed=4, gold_seed=5), random_frame(9, 0.7, seed=6, gold_seed=5)],
        [random_frame(9, 0.6, seed=7, gold_seed=5), random_frame(9, 0.4, seed=8, gold_seed=5)],
        "accuracy",
    )
    assert set(jav.first[0]["id"]) > set(sun.first[0]["id"])  # the same ids in both languages
    resamples, seed = 300, 13
    delta, deltas = hand_deltas([jav, sun], resamples, seed)
    got = stratified_difference([jav, sun], resamples, seed)
    assert got.delta == pytest.approx(delta, abs=1e-9)
    assert [got.low, got.high] == pytest.approx(list(np.percentile(deltas, [2.5, 97.5])), abs=1e-9)
    assert np.abs(deltas).min() > 1e-9  # no resample near a tie: the counts below are exact
    below, above = np.sum(deltas < 0), np.sum(deltas > 0)
    assert got.p == pytest.approx(min(1.0, 2 * (1 + min(below, above)) / (1 + resamples)))
    assert stratified_paired_bootstrap([jav, sun], resamples, seed) == pytest.approx((1 + below) / (1 + resamples))
    # One language is one stratum: the per-language difference, on the same draws.
    assert tuple(stratified_difference([jav], resamples, seed)) == tuple(difference(*jav, resamples, seed))


def test_the_averages_interval_excludes_zero_where_a_row_is_better_on_average_and_contains_it_where_languages_cancel():
    def systems(accuracy: float, first_seed: int, gold_seed: int) -> list[pd.DataFrame]:
        return [random_frame(300, accuracy, seed=first_seed + s, gold_seed=gold_seed) for s in range(2)]

    jav_good, jav_bad = systems(0.8, 10, 0), systems(0.6, 20, 0)
    sun_good, sun_bad = systems(0.8, 30, 1), systems(0.6, 40, 1)
    better = stratified_difference(
        [Stratum(jav_good, jav_bad, "macro_f1", LABELS), Stratum(sun_good, sun_bad, "macro_f1", LABELS)], 1000, 0
    )
    assert better.delta > 10 and 0 < better.low < better.delta < better.high and better.p < 0.01
    # Better in Javanese, worse in Sundanese by as much: each language's interval excludes 0, the average's does not.
    javanese = difference(jav_good, jav_bad, "macro_f1", LABELS, 1000, 0)
    sundanese = difference(sun_bad, sun_good, "macro_f1", LABELS, 1000, 0)
    assert javanese.low > 0 and sundanese.high < 0
    mixed = [Stratum(jav_good, jav_bad, "macro_f1", LABELS), Stratum(sun_bad, sun_good, "macro_f1", LABELS)]
    cancel = stratified_difference(mixed, 1000, 0)
    assert cancel.low < 0 < cancel.high and cancel.p > 0.05
    assert cancel.delta == pytest.approx((javanese.delta + sundanese.delta) / 2)


def test_the_average_column_of_a_report_from_mlflow_shows_p_and_the_difference_with_its_interval(tmp_path, capsys):
    """``flare-ray report --baseline lora`` on a two-language sweep in a real MLflow store whose languages share
    their example ids: the average's p, Δ and interval are the stratified bootstrap of the runs' predictions."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    score = lambda cell, language, seed: 50.0 + seed + (30 if cell["method.kind"] == "flare" else 0)  # noqa: E731
    cells_ = [{"method.kind": kind} for kind in ("lora", "flare")]
    sweep(client, tmp_path, "two", cells_, ["jav", "sun"], score, model="tiny:xlm-roberta")
    with_predictions(client, tmp_path, "two")
    out = tmp_path / "report"
    code = main(["two", "--tracking-uri", uri, "--output", str(out), "--resamples", "200", "--baseline", "lora"])
    printed = capsys.readouterr().out
    assert code == 0
    table = pd.read_csv(out / "report.csv")
    header = [h.strip() for h in printed[printed.index("| row") :].splitlines()[0].split("|")[1:-1]]
    assert header[-5:] == [
        "average ‡",
        "average p",
        "average Δ vs lora [95% CI]",
        "average p vs lora",
        "hyperparameters",
    ]

    loaded = load_sweep(client, "two")
    lines = table.set_index(["row", "column"])

    def frames(row: str, language: str) -> list[pd.DataFrame]:
        return [loaded.predictions(r) for r in json.loads(lines.loc[(row, language), "run_ids"])]

    strata = [Stratum(frames("flare", lang), frames("lora", lang), "macro_f1", LABELS) for lang in ("jav", "sun")]
    expected = stratified_difference(strata, 200, 0)
    flare, lora = lines.loc[("flare", AVERAGE)], lines.loc[("lora", AVERAGE)]
    assert [flare[k] for k in ("delta", "delta_low", "delta_high", "p_baseline")] == pytest.approx(list(expected))
    assert 0 < flare["delta_low"] < flare["delta"] < flare["delta_high"] and flare["best"]
    assert lora["p_value"] == pytest.approx(stratified_paired_bootstrap(strata, 200, 0)) and lora["p_holm"] < 0.05
    (row,) = [line for line in printed.splitlines() if line.startswith("| flare")]
    assert f"{expected.delta:+.2f} [{expected.low:+.2f}, {expected.high:+.2f}]" in row.split("|")[-4]
    assert "p-values and Δ of the average column: a stratified paired bootstrap" in printed
    assert "‡ average: not the paper's setting:\n- model: tiny:xlm-roberta" in (out / "report.md").read_text()


def test_the_average_is_holm_corrected_like_any_column_and_marked_where_its_languages_settings_differ():
    rows = [
        ({"method.kind": "flare", "method.lora.r": r}, language, s, 80 + r, 50.0 + 10 * r + s)
        for r in (1, 2, 3)
        for language in ("jav", "sun")
        for s in (0, 1)
    ]
    differing = {"sun": {"train": {"as_in_paper": False, "made_of": "human translations"}}}
    sweep = records("s", ["jav", "sun"], rows, provenance=differing)
    table, columns = cells([sweep], resamples=200, seed=0, baseline="r=1")
    average = table[table["column"] == AVERAGE]
    assert average["p_value"].notna().sum() == 2 and average["delta"].notna().sum() == 2
    assert list(average["p_holm"].fillna(-1)) == list(pd.Series(holm(list(average["p_value"]))).fillna(-1))
    assert list(average["p_baseline_holm"].fillna(-1)) == list(pd.Series(holm(list(average["p_baseline"]))).fillna(-1))
    header = [h.strip() for h in markdown(table, columns).splitlines()[0].split("|")[1:-1]]
    assert "average ‡" in header and "average p vs r=1" in header
    notes = _notes([sweep], table, columns, resamples=200, seed=0, baseline="r=1")
    assert (
        "‡ average: over languages in different settings:\n- jav: the paper's\n- sun: train: human translations"
        in notes
    )
    assert any("Holm-corrected over the 2 comparisons of each column" in n for n in notes)

    same = records("t", ["jav", "sun"], rows)  # the paper's setting everywhere: no ‡ on the average
    table, columns = cells([same], resamples=20, seed=0)
    assert "average p" in markdown(table, columns) and "‡" not in markdown(table, columns)
    assert not any(n.startswith("‡") for n in _notes([same], table, columns, 20, 0))

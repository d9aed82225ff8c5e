"""The report's pieces on records built here: the paired bootstrap, the per-example metrics behind it, the
table's aggregation (mean ± std over seeds, n, best, average) and the figures (decoded PNGs). The report
of real sweeps from MLflow: tests/e2e/test_ablation.py."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from flare_ray.report import SweepRecords, paired_bootstrap
from flare_ray.report.plots import bars, optuna_plots
from flare_ray.report.render import markdown
from flare_ray.report.significance import resampled_scores
from flare_ray.report.table import AVERAGE, cells, row_names
from flare_ray.tasks.metrics import classification_scores, squad_scores

LABELS = ("positive", "neutral", "negative")


def frame(gold, predicted) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"e{i}" for i in range(len(gold))],
            "gold": gold,
            "prediction": predicted,
            "correct": [float(p == g) for p, g in zip(predicted, gold)],
        }
    )


def random_frame(n: int, accuracy: float, seed: int, gold_seed: int | None = None) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    gold = list(np.random.default_rng(seed if gold_seed is None else gold_seed).choice(LABELS, n))
    wrong = {g: [lab for lab in LABELS if lab != g] for g in LABELS}
    predicted = [g if rng.random() < accuracy else wrong[g][int(rng.integers(2))] for g in gold]
    return frame(gold, predicted)


def test_a_row_right_where_the_other_is_wrong_is_significant_and_identical_rows_are_not():
    gold = [LABELS[i % 3] for i in range(60)]
    right, wrong = frame(gold, gold), frame(gold, [LABELS[(i + 1) % 3] for i in range(60)])
    for metric in ("accuracy", "macro_f1"):
        p = paired_bootstrap([right], [wrong], metric, LABELS, resamples=1000, seed=0)
        assert p < 0.01 and p == pytest.approx(1 / 1001), metric  # no resample where the better row does not win
        assert paired_bootstrap([right], [right.copy()], metric, LABELS) == 1.0, metric  # identical: p = 1
    close = (
        [random_frame(200, 0.62, s, gold_seed=0) for s in (1, 2)],
        [random_frame(200, 0.60, s, gold_seed=0) for s in (3, 4)],
    )
    p = paired_bootstrap(*close, "accuracy", seed=7)
    assert p == paired_bootstrap(*close, "accuracy", seed=7)  # deterministic given its seed
    assert p != paired_bootstrap(*close, "accuracy", seed=8) and 0 < p <= 1


def test_the_bootstrap_pairs_examples_by_id_and_pools_seeds():
    gold = [LABELS[i % 3] for i in range(30)]
    good = frame(gold, gold)
    bad = frame(gold, [LABELS[(i + 1) % 3] for i in range(30)])
    shuffled = good.sample(frac=1.0, random_state=0)  # order does not matter, the ids do
    assert paired_bootstrap([shuffled], [bad], "accuracy") == pytest.approx(1 / 1001)
    # A row whose two seeds are one all right and one all wrong ties a row half right on every example... on
    # the seed mean: never better than a row that is always right.
    assert paired_bootstrap([good, bad], [good], "accuracy") == 1.0
    with pytest.raises(ValueError, match="share no scored example"):
        paired_bootstrap([good], [bad.assign(id=[f"x{i}" for i in range(30)])], "accuracy")


def test_resampled_scores_with_one_weight_per_example_are_the_task_metrics():
    f = random_frame(120, 0.5, 0)
    f.loc[3, "prediction"] = None  # an invalid generation counts as wrong
    f.loc[3, "correct"] = 0.0
    ones = np.ones((1, len(f)), dtype=int)
    scores = classification_scores(list(f["prediction"]), list(f["gold"]), LABELS)
    assert resampled_scores(f, "accuracy", ones)[0] == pytest.approx(scores["accuracy"])
    assert resampled_scores(f, "macro_f1", ones, LABELS)[0] == pytest.approx(scores["macro_f1"])
    answers = [["a cat"], ["the dog", "dog"], ["blue"]]
    predicted = ["a cat", "dogs", "red sky"]
    each = [squad_scores([p], [g]) for p, g in zip(predicted, answers)]
    qa = pd.DataFrame(
        {"id": ["q0", "q1", "q2"], "exact_match": [s["exact_match"] for s in each], "f1": [s["f1"] for s in each]}
    )
    whole = squad_scores(predicted, answers)
    for metric in ("exact_match", "f1"):
        assert resampled_scores(qa, metric, np.ones((1, 3), dtype=int))[0] == pytest.approx(whole[metric])


class Records(SweepRecords):
    """A sweep's records made here (what :func:`load_sweep` reads from MLflow), predictions in memory."""

    def predictions(self, run_id: str, split: str = "test"):
        return self._frames.get(run_id)


def records(name: str, languages: list[str], scores: list, provenance=None, space=None) -> Records:
    """``scores``: (cell dict, language, seed, validation, test macro F1) per trial."""
    rows, frames = [], {}
    for i, (cell, language, seed, validation, test) in enumerate(scores):
        run = f"{name}-{i}"
        rows.append(
            {
                "run_id": run,
                "trial_id": f"t{i}",
                "status": "FINISHED",
                "language": language,
                "method": cell.get("method.kind", "flare"),
                "cell": json.dumps(cell, sort_keys=True),
                "configuration": json.dumps(cell, sort_keys=True),
                "seed": seed,
                "validation": validation,
                "best_epoch": 1,
                "curve": [(1, validation - 5), (2, validation)],
                "test/macro_f1": test,
            }
        )
        frames[run] = random_frame(90, test / 100, seed=i)
    config = {
        "name": name,
        "task": {"name": "nusax", "languages": languages, "max_records": {}},
        "model": {"name_or_path": "FacebookAI/xlm-roberta-large"},
        "method": {"kind": "flare"},
        "search": {"metric": "validation/macro_f1", "mode": "max", "space": space or {}},
    }
    out = Records(name, f"parent-{name}", "0", config, provenance or {}, pd.DataFrame(rows), client=None)
    out._frames = frames
    return out


def test_cells_are_the_mean_and_std_over_seeds_with_the_best_marked_and_the_average_per_seed():
    flare, lora = {"method.kind": "flare"}, {"method.kind": "lora"}
    scores = [
        (flare, "jav", 0, 80, 70.0),
        (flare, "jav", 1, 82, 74.0),
        (lora, "jav", 0, 70, 60.0),
        (lora, "jav", 1, 71, 62.0),
        (flare, "sun", 0, 75, 50.0),
        (flare, "sun", 1, 76, 54.0),
        (lora, "sun", 0, 77, 58.0),
        (lora, "sun", 1, 79, 58.0),
    ]
    table, columns = cells([records("s", ["jav", "sun"], scores)], resamples=200, seed=0)
    at = table.set_index(["row", "column"])
    assert at.loc[("flare", "jav"), "mean"] == 72.0 and at.loc[("flare", "jav"), "std"] == pytest.approx(
        np.std([70, 74], ddof=1)
    )
    assert (
        at.loc[("flare", "jav"), "n"] == 2 and at.loc[("flare", "jav"), "best"] and not at.loc[("lora", "jav"), "best"]
    )
    assert at.loc[("lora", "sun"), "best"] and at.loc[("lora", "sun"), "std"] == 0.0
    assert np.isnan(at.loc[("flare", "jav"), "p_value"]) and 0 < at.loc[("lora", "jav"), "p_value"] <= 1
    # average: per seed over languages (seed 0: (70+50)/2 = 60, seed 1: 64), then mean ± std
    assert at.loc[("flare", AVERAGE), "mean"] == 62.0 and at.loc[("flare", AVERAGE), "std"] == pytest.approx(
        np.std([60, 64], ddof=1)
    )
    assert at.loc[("flare", AVERAGE), "best"] == (62.0 > 59.5)
    text = markdown(table, columns)
    assert "**72.00 ± 2.83 (n=2)**" in text and "60.00 (n=1)" not in text and "jav p" in text


def test_rows_are_named_by_the_keys_that_vary_and_a_search_keeps_its_best_configuration_per_row():
    assert row_names(
        [{"method.kind": "flare", "method.lora.r": 8}, {"method.kind": "flare_mt", "method.lora.r": 8}]
    ) == ["flare", "flare_mt"]
    assert row_names([{"method.kind": "flare", "method.lora.r": 8}, {"method.kind": "flare", "method.lora.r": 64}]) == [
        "r=8",
        "r=64",
    ]
    assert row_names([{"method.kind": "a", "x.r": 1}, {"method.kind": "b", "x.r": 2}]) == ["a, r=1", "b, r=2"]
    sweep = records("s", ["jav"], [({"method.kind": "flare"}, "jav", 0, 80, 70.0)])
    sweep.trials = pd.concat(
        [
            sweep.trials,
            sweep.trials.assign(run_id="other", configuration='{"lr": 1}', validation=90, **{"test/macro_f1": 40.0}),
        ]
    )
    sweep._frames["other"] = sweep._frames["s-0"]
    table, _ = cells([sweep], resamples=100, seed=0)
    assert table.loc[0, "mean"] == 40.0 and table.loc[0, "configuration"] == '{"lr": 1}'  # the best validation's


def test_missing_test_scores_show_as_n_of_trials_and_deviations_mark_the_column():
    scores = [({"method.kind": "flare"}, "jav", 0, 80, 70.0), ({"method.kind": "flare"}, "jav", 1, 81, float("nan"))]
    sweep = records(
        "s", ["jav"], scores, provenance={"jav": {"train": {"as_in_paper": False, "made_of": "human translations"}}}
    )
    sweep.config["task"]["max_records"] = {"train": 64}
    table, columns = cells([sweep], resamples=100, seed=0)
    assert table.loc[0, "n"] == 1 and table.loc[0, "trials"] == 2 and not table.loc[0, "paper_setting"]
    assert columns[0].deviations == ["train: human translations", "train: only the first 64 records"]
    assert "70.00 (n=1 of 2)" in markdown(table, columns) and "jav ‡" in markdown(table, columns)


def test_the_figures_are_valid_images(tmp_path):
    space = {
        "method.flare.fusion": {"type": "categorical", "values": ["add", "mul", "add_relu"]},
        "training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
    scores = [
        ({"method.flare.fusion": fusion, "training.learning_rate": lr}, "jav", 0, 60 + 3 * i % 7, 50.0 + i)
        for i, (fusion, lr) in enumerate(
            [("add", 1e-3), ("mul", 3e-3), ("add_relu", 5e-4), ("add", 8e-3), ("mul", 2e-4)]
        )
    ]
    sweep = records("searched", ["jav"], scores, space=space)
    table, _ = cells([sweep], resamples=50, seed=0)
    paths = [bars(table, tmp_path / "bars.png", "t"), *optuna_plots(sweep, "jav", tmp_path)]
    assert [p.name for p in paths] == [
        "bars.png",
        "optuna-searched-jav-parallel.png",
        "optuna-searched-jav-importance.png",
    ]
    for path in paths:
        image = plt.imread(path)  # decodes the PNG
        assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.01, path.name  # not blank


def test_sweeps_of_two_tasks_join_into_one_table_with_a_column_per_task_and_language():
    flare, lora = {"method.kind": "flare"}, {"method.kind": "lora"}
    nusax = records("a", ["jav"], [(flare, "jav", 0, 80, 70.0), (lora, "jav", 0, 70, 60.0)])
    xnli = records("b", ["sw"], [(flare, "sw", 0, 60, 55.0), (lora, "sw", 0, 61, 57.0)])
    xnli.config["task"]["name"] = "xnli"
    xnli.trials = xnli.trials.rename(columns={"test/macro_f1": "test/accuracy"})
    for f in xnli._frames.values():
        f["correct"] = (f["gold"] == f["prediction"]).astype(float)
    table, columns = cells([nusax, xnli], resamples=100, seed=0)
    assert [c.name for c in columns] == ["nusax/jav", "xnli/sw"]
    at = table.set_index(["row", "column"])
    assert (
        at.loc[("flare", "nusax/jav"), "metric"] == "test/macro_f1"
        and at.loc[("lora", "xnli/sw"), "metric"] == "test/accuracy"
    )
    assert at.loc[("lora", "xnli/sw"), "best"] and at.loc[("flare", "nusax/jav"), "best"]
    assert at.loc[("flare", AVERAGE), "mean"] == pytest.approx((70 + 55) / 2)
    header = [h.strip() for h in markdown(table, columns).splitlines()[0].split("|")[1:-1]]
    assert header == ["row", "nusax/jav", "nusax/jav p", "xnli/sw", "xnli/sw p", "average"]


def test_two_sweeps_with_the_same_setting_say_its_footnote_once():
    from flare_ray.report.build import _notes

    provenance = {"jav": {"train": {"as_in_paper": False, "made_of": "human translations"}}}
    a = records("a", ["jav"], [({"method.kind": "flare"}, "jav", 0, 80, 70.0)], provenance=provenance)
    b = records("b", ["jav"], [({"method.kind": "lora"}, "jav", 0, 70, 60.0)], provenance=provenance)
    table, columns = cells([a, b], resamples=100, seed=0)
    notes = _notes([a, b], table, columns, resamples=100, seed=0)
    assert sum("not the paper's setting" in note for note in notes) == 1

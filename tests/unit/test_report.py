"""The report's pieces on records built here: the paired bootstrap, the per-example metrics behind it, the
table's aggregation (mean ± std over seeds, n, best, average) and the figures (decoded PNGs). The report
of real sweeps from MLflow: tests/e2e/test_ablation.py."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from flare_ray.report import SweepRecords
from flare_ray.report.plots import bars, optuna_plots
from flare_ray.report.render import markdown
from flare_ray.report.table import AVERAGE, cells, row_names
from flare_ray.significance import paired_bootstrap, resampled_scores
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
                "loss_curve": [(1, 1.0 + i / 10), (2, 0.5 + i / 10)],
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
    assert header == [
        "row",
        "nusax/jav",
        "nusax/jav p",
        "xnli/sw",
        "xnli/sw p",
        "average",
        "average p",  # stratified: macro F1 on nusax/jav and accuracy on xnli/sw, averaged
        "hyperparameters",
    ]


def test_two_sweeps_with_the_same_setting_say_its_footnote_once():
    from flare_ray.report.build import _notes

    provenance = {"jav": {"train": {"as_in_paper": False, "made_of": "human translations"}}}
    a = records("a", ["jav"], [({"method.kind": "flare"}, "jav", 0, 80, 70.0)], provenance=provenance)
    b = records("b", ["jav"], [({"method.kind": "lora"}, "jav", 0, 70, 60.0)], provenance=provenance)
    table, columns = cells([a, b], resamples=100, seed=0)
    notes = _notes([a, b], table, columns, resamples=100, seed=0)
    assert sum("not the paper's setting" in note for note in notes) == 1


def two_rows(**kwargs) -> Records:
    """LoRA and FLARE on Javanese, three seeds each."""
    flare, lora = {"method.kind": "flare"}, {"method.kind": "lora"}
    scores = [(lora, "jav", s, 70 + s, 60.0 + s) for s in range(3)] + [
        (flare, "jav", s, 80 + s, 70.0 + 2 * s) for s in range(3)
    ]
    return records("s", ["jav"], scores, **kwargs)


def test_the_bars_show_every_seed_as_a_dot_over_its_rows_bar():
    from flare_ray.report.plots import bar_figure

    table, _ = cells([two_rows()], resamples=50, seed=0)
    fig = bar_figure(table, "t")
    ax = fig.axes[0]
    (lora_bar, flare_bar) = [c for c in ax.containers if hasattr(c, "patches")]
    dots = [c for c in ax.collections if c.get_offsets().shape[0] == 3]  # one scatter per row: its 3 seeds
    assert len(dots) == 2
    for bar, collection, expected in zip(
        (lora_bar, flare_bar), dots, ([60.0, 61.0, 62.0], [70.0, 72.0, 74.0]), strict=True
    ):
        x, y = collection.get_offsets().T
        assert sorted(y) == expected  # each seed's own test score
        patch = bar.patches[0]
        assert patch.get_height() == pytest.approx(np.mean(expected))  # the bar is their mean
        assert ((x >= patch.get_x()) & (x <= patch.get_x() + patch.get_width())).all()  # the dots sit on it
    plt.close(fig)


def test_the_curves_are_the_mean_over_seeds_with_a_std_band_and_the_training_loss_below():
    from matplotlib.collections import PolyCollection

    from flare_ray.report.plots import curve_figure

    sweep = two_rows()
    table, _ = cells([sweep], resamples=50, seed=0)
    by_run = {row.run_id: row._asdict() for row in sweep.trials.itertuples()}
    fig = curve_figure(table, by_run, "validation/macro_f1")
    validation, loss = fig.axes[0], fig.axes[1]
    assert "validation/macro_f1" in validation.get_ylabel() and "train/loss" in loss.get_ylabel()
    flare = sweep.trials[sweep.trials["method"] == "flare"]
    for ax, curve in ((validation, "curve"), (loss, "loss_curve")):
        values = pd.DataFrame([p for c in flare[curve] for p in c], columns=["epoch", "value"])
        stats = values.groupby("epoch")["value"].agg(["mean", "std"])
        (line,) = [ln for ln in ax.get_lines() if ln.get_label() == "flare"]
        assert list(line.get_xdata()) == [1, 2] and np.allclose(line.get_ydata(), stats["mean"])
        bands = [c for c in ax.collections if isinstance(c, PolyCollection)]
        assert len(bands) == 2  # one band per row
        band = bands[1].get_paths()[0].vertices[:, 1]
        assert band.min() == pytest.approx((stats["mean"] - stats["std"]).min())
        assert band.max() == pytest.approx((stats["mean"] + stats["std"]).max())
    plt.close(fig)


def test_the_latex_table_has_booktabs_rules_and_the_numbers_of_the_markdown_table():
    import re

    from flare_ray.report.render import latex

    sweep = two_rows()
    sweep.trials.loc[sweep.trials["method"] == "flare", "method"] = "flare_mt"  # a name to escape
    sweep.trials["cell"] = sweep.trials["configuration"] = [
        json.dumps({"method.kind": m}) for m in sweep.trials["method"]
    ]
    table, columns = cells([sweep], resamples=50, seed=0, baseline="lora")
    text = latex(table, columns, "test/macro_f1, 95% interval")
    lines = text.splitlines()
    assert lines.count(r"\toprule") == lines.count(r"\midrule") == lines.count(r"\bottomrule") == 1
    assert lines.index(r"\toprule") < lines.index(r"\midrule") < lines.index(r"\bottomrule")
    assert r"flare\_mt" in text and "flare_mt" not in text.replace(r"flare\_mt", "")  # underscores escaped
    assert r"\caption{test/macro\_f1, 95\% interval}" in text and r"\bfseries 72.00 $\pm$ 2.00 (n=3)" in text
    number = re.compile(r"[+-]?\d+\.\d+")
    body = text[text.index(r"\midrule") : text.index(r"\bottomrule")]
    table_md = markdown(table, columns)
    assert number.findall(body) == number.findall("\n".join(table_md.splitlines()[2:]))  # the same, in order
    assert len(number.findall(body)) >= 8  # means, stds, p-values, Δ and its interval


def test_a_baseline_row_gives_every_other_row_its_difference_interval_and_holm_corrected_p():
    from flare_ray.report import ReportError
    from flare_ray.significance import difference, holm

    sweep = two_rows()
    table, columns = cells([sweep], resamples=200, seed=3, baseline="lora")
    at = table.set_index("row")
    assert at.loc["lora", "baseline"] == "lora" and np.isnan(at.loc["lora", "delta"])
    frames = [sweep.predictions(r) for r in json.loads(at.loc["flare", "run_ids"])]
    base = [sweep.predictions(r) for r in json.loads(at.loc["lora", "run_ids"])]
    expected = difference(frames, base, "macro_f1", LABELS, resamples=200, seed=3)
    assert list(at.loc["flare", ["delta", "delta_low", "delta_high", "p_baseline"]]) == pytest.approx(list(expected))
    assert at.loc["flare", "p_baseline_holm"] == holm([expected.p])[0]  # one comparison: unchanged
    text = markdown(table, columns)
    assert "jav Δ vs lora [95% CI]" in text and "baseline" in text
    assert f"{expected.delta:+.2f} [{expected.low:+.2f}, {expected.high:+.2f}]" in text
    with pytest.raises(ReportError, match="baseline 'xmixup' matches no row of the report"):
        cells([sweep], resamples=10, seed=0, baseline="xmixup")
    both = records(
        "b", ["jav"], [({"method.kind": "flare", "method.flare.fusion": f}, "jav", 0, 80, 70.0) for f in ("add", "mul")]
    )
    with pytest.raises(ReportError, match="matches 2 rows of column jav"):
        cells([both], resamples=10, seed=0, baseline="flare")
    table, _ = cells([both], resamples=10, seed=0, baseline="fusion=mul")  # a row's name
    assert set(table["baseline"]) == {"fusion=mul"}


def test_p_values_against_the_best_are_holm_corrected_per_column_and_said_so():
    from flare_ray.report.build import _notes
    from flare_ray.significance import holm

    rows = [
        ({"method.kind": "flare", "method.lora.r": r}, "jav", s, 80 + r, 60.0 + r + s)
        for r in (1, 2, 3, 4)
        for s in (0, 1)
    ]
    sweep = records("s", ["jav"], rows)
    table, columns = cells([sweep], resamples=200, seed=0)
    assert table["p_value"].notna().sum() == 3
    assert list(table["p_holm"].fillna(-1)) == list(pd.Series(holm(list(table["p_value"]))).fillna(-1))
    assert (table["significant"] == (table["p_holm"] < 0.05)).all()
    notes = _notes([sweep], table, columns, resamples=200, seed=0)
    assert "p-values (p) are Holm-corrected over the 3 comparisons of each column (Holm 1979)" in notes[1]


def test_the_hyperparameters_column_shows_what_selection_chose_and_the_recipe():
    from flare_ray.report.table import hyperparameters

    assert (
        hyperparameters(
            {"method.kind": "flare"},
            {"method.kind": "flare", "training.learning_rate": 0.0003},
            {"training.learning_rate": "0.0003", "method.lora.r": "16"},
        )
        == "learning_rate=0.0003, r=16"
    )
    assert hyperparameters({"method.kind": "lora", "method.lora.r": 8}, {}, {"method.lora.r": "8"}) == ""
    sweep = two_rows()
    sweep.trials["params"] = [{"training.learning_rate": "0.003", "method.lora.r": "8"}] * len(sweep.trials)
    table, columns = cells([sweep], resamples=10, seed=0)
    assert "| learning_rate=0.003, r=8 |" in markdown(table, columns)


def test_the_footnote_of_a_column_not_in_the_papers_setting_is_a_list():
    from flare_ray.report.build import _notes
    from flare_ray.report.render import note_html

    provenance = {"jav": {"train": {"as_in_paper": False, "made_of": "human translations"}}}
    sweep = records("a", ["jav"], [({"method.kind": "flare"}, "jav", 0, 80, 70.0)], provenance=provenance)
    sweep.config["task"]["max_records"] = {"test": 400}
    table, columns = cells([sweep], resamples=10, seed=0)
    (note,) = [n for n in _notes([sweep], table, columns, 10, 0) if "not the paper's setting" in n]
    assert note.splitlines() == [
        "‡ jav: not the paper's setting:",
        "- train: human translations",
        "- test: only the first 400 records",
    ]
    assert note_html(note) == (
        "<p>‡ jav: not the paper&#x27;s setting:</p><ul><li>train: human translations</li>"
        "<li>test: only the first 400 records</li></ul>"
    )


def test_the_report_commands_help_imports_no_heavy_library():
    """``python -m flare_ray.report --help`` imports neither MLflow, pandas, matplotlib nor the training stack (the
    package's names load when first used); what it imports, from ``-X importtime``, not how long it takes."""
    import re
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "flare_ray.report", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--baseline ROW" in done.stdout
    imported = set(re.findall(r"^import time:.*\|\s*([\w.]+)$", done.stderr, flags=re.MULTILINE))
    assert "flare_ray.cli.report" in imported  # the parse of -X importtime works
    heavy = {"mlflow", "pandas", "matplotlib", "numpy", "torch", "transformers", "ray", "optuna"}
    assert not heavy & {name.split(".")[0] for name in imported}

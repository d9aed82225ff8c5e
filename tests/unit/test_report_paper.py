"""The paper's own numbers beside a report's: MLflow records made to look like XLM-R Large sweeps on the paper's
data match the published cells of Tables 1-4 and 6-8 (mean, std, yours - paper's) in the Markdown, CSV and HTML;
a tiny model's sweep, or one on data that are not the paper's, says that no published cell matches."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from flare_ray.report import build_report
from flare_ray.report.paper import published, setting
from flare_ray.tracking import mlflow_runs

NUSAX = ["ace", "ban", "bjn", "bug", "ind", "jav", "mad", "min", "nij", "sun"]
XNLI = ["ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"]
METRIC = {"nusax": "macro_f1", "xnli": "accuracy"}
PAPER = {"as_in_paper": True, "gold_source": False}
OFFLINE = {"as_in_paper": False, "gold_source": False}


def provenance(test_gold: bool = False, as_in_paper: bool = True) -> dict:
    split = PAPER if as_in_paper else OFFLINE
    return {
        "train": dict(split, made_of="train"),
        "validation": dict(split, made_of="validation"),
        "test": dict(OFFLINE if test_gold else split, made_of="test", gold_source=test_gold),
    }


def sweep(
    client: MlflowClient,
    tmp_path,
    name: str,
    cells: list[dict],
    languages: list[str],
    scores,
    *,
    model: str = "FacebookAI/xlm-roberta-large",
    data: dict | None = None,
    task: str = "nusax",
    extra: dict | None = None,
) -> None:
    """A sweep's parent run and one child run per (cell, language, seed), as the platform logs them;
    ``scores(cell, language, seed)``: the test score (the task's metric); ``extra``: more config sections."""
    experiment = client.create_experiment(name)
    config = {
        "name": name,
        "model": {"name_or_path": model},
        "method": {"kind": "flare"},
        "task": {"name": task, "languages": languages, "max_records": {}},
        "search": {"metric": f"validation/{METRIC[task]}", "mode": "max"},
        **(extra or {}),
    }
    parent = client.create_run(experiment, tags={mlflow_runs.SWEEP_TAG: name}).info.run_id
    (tmp_path / name).mkdir()
    (tmp_path / name / "config.json").write_text(json.dumps(config))
    (tmp_path / name / "data_provenance.json").write_text(
        json.dumps({lang: data or provenance() for lang in languages})
    )
    client.log_artifact(parent, str(tmp_path / name / "config.json"))
    client.log_artifact(parent, str(tmp_path / name / "data_provenance.json"))
    trial = 0
    for cell in cells:
        for language in languages:
            for seed in (0, 1):
                tags = {
                    MLFLOW_PARENT_RUN_ID: parent,
                    mlflow_runs.TRIAL_TAG: f"t{trial:04d}",
                    mlflow_runs.LANGUAGE_TAG: language,
                    mlflow_runs.METHOD_TAG: cell["method.kind"],
                    mlflow_runs.CELL_TAG: json.dumps(cell, sort_keys=True),
                    mlflow_runs.CONFIGURATION_TAG: json.dumps(cell, sort_keys=True),
                    mlflow_runs.SEED_TAG: str(seed),
                }
                run = client.create_run(experiment, tags=tags).info.run_id
                client.log_metric(run, f"validation/{METRIC[task]}", 70.0 + seed, step=1)
                client.log_metric(run, f"test/{METRIC[task]}", scores(cell, language, seed))
                client.set_terminated(run)
                trial += 1
    client.set_terminated(parent)


def paper_value(model: str = "FacebookAI/xlm-roberta-large", **where) -> pd.Series:
    cells = published()
    cells = cells[cells["model"] == model]
    for key, value in where.items():
        cells = cells[cells[key] == value]
    assert len(cells) == 1, where
    return cells.iloc[0]


@pytest.fixture
def client(tmp_path):
    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_a_table1_xnli_sweep_of_xlmr_large_shows_the_papers_cells_and_the_differences(client, tmp_path):
    """Per language: Table 6; the average over the fourteen languages: Table 1 (Table 6's Avg. too: the lowest
    table is kept)."""
    cells = [{"method.kind": kind} for kind in ("lora", "flare")]

    def score(cell, language, seed):
        return 70.0 + seed + (5 if cell["method.kind"] == "flare" else 0) + XNLI.index(language)

    sweep(client, tmp_path, "t1", cells, XNLI, score, task="xnli")
    report = build_report(client, ["t1"], tmp_path / "report", resamples=10)
    table = report.table.set_index(["row", "column"])
    for kind in ("lora", "flare"):
        sw = paper_value(table=6, task="xnli", language="sw", setting="mt", method=kind, variant="")
        line = table.loc[(kind, "sw")]
        assert line["paper_table"] == 6 and line["paper_mean"] == sw["mean"]
        assert line["difference"] == pytest.approx(line["mean"] - sw["mean"])
        average = paper_value(table=1, task="xnli", language="average", setting="mt", method=kind, variant="")
        assert table.loc[(kind, "average"), "paper_table"] == 1
        assert table.loc[(kind, "average"), ["paper_mean", "paper_std"]].tolist() == [average["mean"], average["std"]]
    csv = pd.read_csv(tmp_path / "report" / "report.csv")
    assert {"paper_table", "paper_mean", "paper_std", "difference"} <= set(csv.columns)
    assert csv["paper_mean"].notna().sum() == 2 * (len(XNLI) + 1)
    markdown = (tmp_path / "report" / "report.md").read_text()
    flare_sw = table.loc[("flare", "sw")]
    assert (
        "## The paper's numbers" in markdown
        and f"{flare_sw['paper_mean']:.2f} (T6), {flare_sw['difference']:+.2f}" in markdown
    )
    assert "(T1)" in markdown and "30 cell(s) match" in markdown
    html = (tmp_path / "report" / "report.html").read_text()
    assert '<table id="paper">' in html and f"{flare_sw['difference']:+.2f}" in html
    assert report.published and "(T6)" in report.published


def test_the_gold_setting_matches_table4_and_its_per_language_cells(client, tmp_path):
    """Train and validation as in the paper, a gold English source at test: Table 4 (and Table 6's gold block)."""
    cells = [{"method.kind": "input_fusion"}, {"method.kind": "flare"}]
    sweep(
        client,
        tmp_path,
        "t4",
        cells,
        XNLI,
        lambda cell, language, seed: 85.0 + seed,
        data=provenance(test_gold=True),
        task="xnli",
    )
    table = build_report(client, ["t4"], tmp_path / "r4", resamples=10).table.set_index(["row", "column"])
    average = paper_value(table=4, task="xnli", language="average", setting="gold", method="input_fusion", variant="")
    assert table.loc[("input_fusion", "average"), "paper_table"] == 4
    assert table.loc[("input_fusion", "average"), "paper_mean"] == average["mean"]
    ur = paper_value(table=6, task="xnli", language="ur", setting="gold", method="flare", variant="")
    assert table.loc[("flare", "ur"), "paper_mean"] == ur["mean"]


def test_variants_match_table2_and_table3_and_a_row_with_more_keys_matches_nothing(client, tmp_path):
    cells = [{"method.kind": "flare", "method.flare.fusion": f} for f in ("add", "mul")]
    sweep(client, tmp_path, "t2", cells, NUSAX, lambda cell, language, seed: 79.0)
    table = build_report(client, ["t2"], tmp_path / "r2", resamples=10).table.set_index(["row", "column"])
    add = paper_value(table=2, task="nusax", language="average", method="flare", variant="method.flare.fusion=add")
    assert table.loc[("fusion=add", "average"), "paper_table"] == 2
    assert table.loc[("fusion=add", "average"), "paper_mean"] == add["mean"]
    assert np.isnan(table.loc[("fusion=add", "jav"), "paper_mean"])  # Table 2 has averages only

    ranks = [{"method.kind": kind, "method.lora.r": r} for kind in ("flare", "flare_mt") for r in (8, 64)]
    sweep(client, tmp_path, "t3", ranks, NUSAX, lambda cell, language, seed: 78.0)
    table = build_report(client, ["t3"], tmp_path / "r3", resamples=10).table.set_index(["row", "column"])
    r8 = paper_value(table=3, task="nusax", language="average", method="flare_mt", variant="method.lora.r=8")
    assert table.loc[("flare_mt, r=8", "average"), "paper_mean"] == r8["mean"]

    lr = [{"method.kind": "flare", "training.learning_rate": x} for x in (1e-4, 2e-4)]
    sweep(client, tmp_path, "lr", lr, NUSAX, lambda cell, language, seed: 78.0)
    table = build_report(client, ["lr"], tmp_path / "rl", resamples=10).table
    assert table["paper_mean"].isna().all()  # the paper has no learning-rate rows


def test_a_tiny_model_or_offline_data_or_a_subset_of_languages_match_nothing_and_say_so(client, tmp_path):
    flare = [{"method.kind": "flare"}]
    sweep(client, tmp_path, "tiny", flare, ["jav"], lambda *a: 60.0, model="tiny:xlm-roberta")
    report = build_report(client, ["tiny"], tmp_path / "rt", resamples=10)
    assert report.table["paper_mean"].isna().all() and not report.published
    assert any(n.startswith("No published cell of the paper") for n in report.notes)
    assert "No published cell of the paper" in (tmp_path / "rt" / "report.md").read_text()

    sweep(client, tmp_path, "offline", flare, ["jav"], lambda *a: 60.0, data=provenance(as_in_paper=False))
    assert build_report(client, ["offline"], tmp_path / "ro", resamples=10).table["paper_mean"].isna().all()

    sweep(client, tmp_path, "two", [{"method.kind": "zero_shot"}], ["jav", "sun"], lambda *a: 60.0)
    table = build_report(client, ["two"], tmp_path / "r2l", resamples=10).table.set_index(["row", "column"])
    jav = paper_value(table=8, task="nusax", language="jav", setting="mt", method="zero_shot", variant="")
    assert table.loc[("zero_shot", "jav"), "paper_mean"] == jav["mean"]  # each language has its published cell
    assert np.isnan(table.loc[("zero_shot", "average"), "paper_mean"])  # the paper's average is over all ten


def test_the_setting_of_a_column_follows_its_provenance():
    assert setting(provenance()) == "mt"
    assert setting(provenance(test_gold=True)) == "gold"
    assert setting(provenance(as_in_paper=False)) is None
    assert setting(provenance(), {"train": 64}) is None and setting(provenance(), {"train": None}) == "mt"
    assert setting({}) is None

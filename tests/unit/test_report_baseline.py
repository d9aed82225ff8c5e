"""The Δ against a baseline row through ``flare-ray report`` on a real MLflow store: ``--baseline ROW`` on the
command line, ``report.baseline`` in the YAML (read back from the sweep's logged config, so the report at the end
of a sweep has it too), the command line over the YAML, a name that matches no row refused in one line; and the
MLflow address of the runs table printed at the end."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from flare_ray.cli.report import main
from flare_ray.experiment import ExperimentConfigError, load_experiment
from flare_ray.tracking import mlflow_runs
from tests.helpers import QUICKSTART
from tests.unit.test_report_paper import sweep

LABELS = ["negative", "neutral", "positive"]


def with_predictions(client: MlflowClient, tmp_path, name: str) -> None:
    """Each child run of sweep ``name`` gets test predictions: FLARE right on 80 % of 120 examples, LoRA on 50 %."""
    parent = client.search_runs(
        [e.experiment_id for e in client.search_experiments()], f"tags.`{mlflow_runs.SWEEP_TAG}` = '{name}'"
    )[0]
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent.info.run_id}'"
    )
    gold = [LABELS[i % 3] for i in range(120)]
    for i, child in enumerate(children):
        rng = np.random.default_rng(i)
        right = rng.random(120) < (0.8 if child.data.tags[mlflow_runs.METHOD_TAG] == "flare" else 0.5)
        predicted = [g if r else LABELS[(LABELS.index(g) + 1) % 3] for g, r in zip(gold, right)]
        frame = pd.DataFrame({"id": [f"e{k}" for k in range(120)], "gold": gold, "prediction": predicted})
        frame["correct"] = (frame["gold"] == frame["prediction"]).astype(float)
        folder = tmp_path / child.info.run_id
        folder.mkdir()
        frame.to_parquet(folder / "test.parquet")
        client.log_artifact(child.info.run_id, str(folder / "test.parquet"), mlflow_runs.PREDICTIONS_PATH)


@pytest.fixture
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    cells = [{"method.kind": kind} for kind in ("lora", "flare")]
    score = lambda cell, language, seed: 50.0 + seed + (30 if cell["method.kind"] == "flare" else 0)  # noqa: E731
    sweep(client, tmp_path, "plain", cells, ["jav"], score, model="tiny:xlm-roberta")
    sweep(
        client,
        tmp_path,
        "yaml",
        cells,
        ["jav"],
        score,
        model="tiny:xlm-roberta",
        extra={"report": {"baseline": "lora"}},
    )
    for name in ("plain", "yaml"):
        with_predictions(client, tmp_path, name)
    return uri


def report(uri: str, tmp_path, name: str, *options: str) -> tuple[int, pd.DataFrame | None]:
    out = tmp_path / f"report-{name}-{len(options)}"
    code = main([name, "--tracking-uri", uri, "--output", str(out), "--resamples", "200", *options])
    return code, pd.read_csv(out / "report.csv") if code == 0 else None


def test_baseline_on_the_command_line_and_in_the_yaml(store, tmp_path, capsys):
    code, table = report(store, tmp_path, "plain")
    assert code == 0 and "delta" not in table and "Δ vs" not in capsys.readouterr().out  # no baseline: no Δ

    code, table = report(store, tmp_path, "plain", "--baseline", "lora")
    printed = capsys.readouterr().out
    assert code == 0 and "| jav Δ vs lora [95% CI]" in printed and "| jav p vs lora" in printed
    flare = table[table["row"] == "flare"].iloc[0]
    assert 20 < flare["delta"] < 40 and 0 < flare["delta_low"] < flare["delta"] < flare["delta_high"]
    assert f"{flare['delta']:+.2f} [{flare['delta_low']:+.2f}, {flare['delta_high']:+.2f}]" in printed
    assert flare["p_baseline_holm"] < 0.05 and table[table["row"] == "lora"]["delta"].isna().all()
    assert "Holm-corrected" in printed
    assert "MLflow: http://127.0.0.1:5000/#/experiments/" in printed and "workflowType=machine_learning" in printed

    code, table = report(store, tmp_path, "yaml")  # report.baseline: lora, as the end-of-sweep report reads it
    assert code == 0 and "| jav Δ vs lora [95% CI]" in capsys.readouterr().out
    assert table[table["row"] == "flare"]["delta"].iloc[0] > 20

    code, table = report(store, tmp_path, "yaml", "--baseline", "flare")  # the command line wins
    assert code == 0 and "| jav Δ vs flare [95% CI]" in capsys.readouterr().out
    assert table[table["row"] == "lora"]["delta"].iloc[0] < -20


def test_a_baseline_that_names_no_row_is_one_line(store, tmp_path, capsys):
    code, _ = report(store, tmp_path, "plain", "--baseline", "xmixup")
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert "baseline 'xmixup' matches no row of the report; expected a row's name or method: ['lora', 'flare']" in err


def test_report_baseline_is_a_key_of_the_yaml():
    assert load_experiment(QUICKSTART).report.baseline is None
    assert load_experiment(QUICKSTART, ["report.baseline=lora"]).report.baseline == "lora"
    with pytest.raises(ExperimentConfigError, match="report"):
        load_experiment(QUICKSTART, ["report.baseline_row=lora"])
    assert json.loads(load_experiment(QUICKSTART, ["report.baseline=lora"]).model_dump_json())["report"] == {
        "baseline": "lora"
    }

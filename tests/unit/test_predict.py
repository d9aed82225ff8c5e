"""``python -m flare_ray.predict``: every bad input is one line and exit status 2, before any model is loaded.
(On the adapters a real sweep registered: ``e2e/test_predict.py``.)
"""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from flare_ray.cli.predict import build_parser, main
from flare_ray.experiment import load_experiment
from flare_ray.predict import english as english_module
from flare_ray.predict import predictor as predictor_module
from flare_ray.tracking.mlflow_runs import register_best
from tests.helpers import QUICKSTART, help_text, no_model


# -- bad input: one line, exit 2, no model -------------------------------------------------------------------------
@pytest.fixture
def fake_store(tmp_path):
    """An MLflow store with one registered 'trial' (a trial_config.json, no weights) per task, and its URI."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("fake", artifact_location=(tmp_path / "artifacts").as_uri())
    for task, language in (("nusax", "jav"), ("xnli", "sw")):
        config = load_experiment(
            QUICKSTART, [f"storage_path={tmp_path}", f"task.name={task}", f"task.languages=[{language}]"]
        )
        folder = tmp_path / f"adapter-{task}"
        folder.mkdir()
        (folder / "trial_config.json").write_text(
            json.dumps({"experiment": config.model_dump(mode="json"), "language": language, "epoch": 1})
        )
        run = client.create_run(experiment)
        client.log_artifact(run.info.run_id, str(folder / "trial_config.json"), "adapter")
        register_best(client, run.info.run_id, f"fake-{task}-{language}", {})
    return uri


@pytest.mark.parametrize(
    "case, expected",
    [
        ("input_extension", r"in\.txt: unknown file type '\.txt'; expected one of \['\.jsonl', '\.csv', '\.tsv'\]"),
        ("output_extension", r"out\.parquet: unknown file type '\.parquet'"),
        ("input_missing", r"nope\.csv: file not found"),
        ("missing_column", r"in\.csv: missing column 'text': nusax reads the target-language text from \['text'\]"),
        (
            "partial_source",
            r"in\.tsv: missing column 'source_hypothesis': the English side is given in \['source_premise'\]",
        ),
        ("not_text", r"in\.jsonl: column 'text': row 2 \(counting from 1\) has no value"),
        ("empty", r"in\.csv: no rows"),
        ("unknown_model", r"unknown model 'nope': no registered model of that name and no run with that id in sqlite:"),
        ("unknown_version", r"unknown model 'fake-nusax-jav/7': 'fake-nusax-jav' has no version 7"),
        ("no_store", r"absent\.db: no MLflow store"),
    ],
)
def test_bad_input_is_one_line_naming_the_file_and_column_before_any_model(
    tmp_path, fake_store, monkeypatch, capsys, case, expected
):
    monkeypatch.setattr(predictor_module, "build_trial", no_model)
    monkeypatch.setattr(english_module, "translate_with_ray", no_model)
    model, uri, output = "fake-nusax-jav", fake_store, tmp_path / "out.csv"
    source = tmp_path / "in.csv"
    pd.DataFrame({"text": ["Aku seneng", "Ora enak"]}).to_csv(source, index=False)
    if case == "input_extension":
        source = tmp_path / "in.txt"
        source.write_text("text\nAku seneng\n")
    elif case == "output_extension":
        output = tmp_path / "out.parquet"
    elif case == "input_missing":
        source = tmp_path / "nope.csv"
    elif case == "missing_column":
        pd.DataFrame({"sentence": ["Aku seneng"]}).to_csv(source, index=False)
    elif case == "partial_source":
        model, source = "fake-xnli-sw", tmp_path / "in.tsv"
        pd.DataFrame({"premise": ["a"], "hypothesis": ["b"], "source_premise": ["A"]}).to_csv(
            source, sep="\t", index=False
        )
    elif case == "not_text":
        source = tmp_path / "in.jsonl"
        source.write_text('{"text": "Aku seneng"}\n{"text": null}\n')
    elif case == "empty":
        source.write_text("text\n")
    elif case == "unknown_model":
        model = "nope"
    elif case == "unknown_version":
        model = "fake-nusax-jav/7"
    elif case == "no_store":
        uri = f"sqlite:///{tmp_path / 'absent.db'}"
    status = main([model, "--input", str(source), "--output", str(output), "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(expected, err), err
    assert not output.exists()


def test_help_names_the_input_columns_of_every_task(capsys):
    text = help_text(main, build_parser(), capsys)
    for columns in (
        "text; English side (optional): source_text",
        "premise, hypothesis",
        "source_premise, source_hypothesis",
        "question, context",
        "source_question, source_context",
        "--translation-cache",
        "$MLFLOW_TRACKING_URI",
    ):
        assert columns in text, columns

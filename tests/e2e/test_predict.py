"""Use the winner: ``python -m flare_ray.predict`` on the adapters a real sweep registered.

End to end (slow): a tiny sweep in-process on a local Ray (tiny XLM-R, NusaX Javanese, one epoch, a grid of
FLARE and FLARE-MT, one trial each) whose test split's English side was translated by the tiny NLLB
(``task.splits.test: mt``); predict on the registered model and on each run reproduces the run's own
``predictions/test.parquet`` row by row, with the English side given, and with it translated by the same
tiny NLLB through the translation job (cached: a second call translates nothing); ``--scores`` gives the class
probabilities of the same predictions; the console of a fresh process is two lines, the libraries' output in
the log file. (Bad input, before any model: ``unit/test_predict.py``; scores on tiny models, extractive QA's
too: ``unit/test_predict_scores.py``.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.artifacts import download_artifacts
from mlflow.tracking import MlflowClient

from flare_ray.cli.predict import main
from flare_ray.predict import english as english_module
from flare_ray.predict import predictor as predictor_module
from flare_ray.predict.tables import read_rows, write_rows
from flare_ray.tasks import TaskConfig, get_task
from flare_ray.tasks.nusax import NusaX
from flare_ray.training import evaluate as evaluate_module
from flare_ray.translate import pipeline
from flare_ray.translate.config import parse_config
from flare_ray.translate.store import provenance_path
from tests.helpers import QUICKSTART, no_model

pytestmark = pytest.mark.ray

TEST_RECORDS = 16
MODEL = "quickstart-nusax-jav"


# -- end to end on a real sweep ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_path, local_ray):
    """A tiny sweep, run in-process: FLARE and FLARE-MT, one trial each, tested on an NLLB-translated test split."""
    from flare_ray.cli.tune import main as tune

    root = tmp_path_factory.mktemp("predict-sweep")
    mt_dir = root / "mt"
    pipeline.run(
        parse_config(
            {
                "task": {"name": "nusax", "language": "jav", "max_records": {"test": TEST_RECORDS}},
                "roles": ["test"],
                "mt_dir": str(mt_dir),
                "model": str(tiny_path("m2m_100")),
                "max_length": 16,
                "batch_size": 8,
            }
        )
    )
    overrides = [
        f"storage_path={root}",
        f"task.max_records={{train: 32, validation: 16, test: {TEST_RECORDS}}}",
        f"task.mt_dir={mt_dir}",
        "task.splits={test: mt}",
        "training.epochs=1",
        "search.scheduler=null",
        "search.space={}",
        "search.num_samples=1",
        "search.grid={method.kind: [flare, flare_mt]}",
        "method.flare.mt_encoder=tiny:m2m_100",
    ]
    with pytest.MonkeyPatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        assert tune([str(QUICKSTART), *[a for o in overrides for a in ("--set", o)]]) == 0
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("quickstart").experiment_id])
    children = {r.data.tags["flare_ray.method"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert sorted(children) == ["flare", "flare_mt"]
    task = get_task(
        TaskConfig(
            name="nusax", language="jav", mt_dir=mt_dir, splits={"test": "mt"}, max_records={"test": TEST_RECORDS}
        )
    )
    return {"root": root, "uri": uri, "client": client, "children": children, "records": task.load("test")}


def run_predictions(sweep, run_id: str) -> pd.DataFrame:
    """A run's own ``predictions/test.parquet``."""
    path = download_artifacts(
        run_id=run_id,
        artifact_path="predictions/test.parquet",
        tracking_uri=sweep["uri"],
        dst_path=str(sweep["root"] / "downloads" / run_id),
    )
    return pd.read_parquet(path)


def rescored(sweep, run_id: str) -> pd.DataFrame:
    """The run's adapter re-scored on its test split by the evaluation's own path (``score_checkpoint``)."""
    from flare_ray.search.trial import score_checkpoint

    folder = download_artifacts(
        run_id=run_id,
        artifact_path="adapter",
        tracking_uri=sweep["uri"],
        dst_path=str(sweep["root"] / "adapters" / run_id),
    )
    return score_checkpoint(folder)[1]


@pytest.fixture
def model_calls(monkeypatch):
    """What the model reads and returns in every prediction pass, by evaluation and by predict alike: the
    encoded inputs and the logits of the whole split (16 rows: one batch, as the evaluation batches them)."""
    calls, original = [], evaluate_module.predict_records

    def recording(encoder, model, records, training):
        rows = list(records)
        assert len(rows) <= training.eval_batch_size
        inputs = encoder.predict_batch(rows).inputs
        with torch.no_grad():
            logits = model.eval()(**{k: v.to(next(model.parameters()).device) for k, v in inputs.items()}).logits
        calls.append({"inputs": inputs, "logits": logits.cpu()})
        return original(encoder, model, records, training)

    monkeypatch.setattr(evaluate_module, "predict_records", recording)
    monkeypatch.setattr(predictor_module, "predict_records", recording)
    return calls


def same_pass(evaluated: dict, predicted: dict) -> None:
    """The same model inputs (target, English side, MT input) and the same logits, exactly."""
    assert sorted(evaluated["inputs"]) == sorted(predicted["inputs"])
    for key, value in evaluated["inputs"].items():
        assert torch.equal(value, predicted["inputs"][key]), key
    assert torch.equal(evaluated["logits"], predicted["logits"])
    assert not torch.allclose(evaluated["logits"][:1], evaluated["logits"][1:])  # rows differ: no constant output


def predict(sweep, model: str, rows: pd.DataFrame, tmp_path: Path, name: str, *extra: str) -> pd.DataFrame:
    """``python -m flare_ray.predict`` in-process; the output table. ``name``: the input file's name."""
    source, output = tmp_path / name, tmp_path / f"out-{Path(name).stem}.jsonl"
    write_rows(rows, source)
    assert main([model, "--input", str(source), "--output", str(output), "--tracking-uri", sweep["uri"], *extra]) == 0
    return read_rows(output)


def wrote_line(capsys) -> str:
    """The command's line that says what it wrote (the last but one: the last says where its log is)."""
    *_, line, logs = capsys.readouterr().out.strip().splitlines()
    assert logs.startswith("logs: ") and logs.endswith(".log"), logs
    return line


@pytest.mark.slow
def test_predict_reproduces_the_test_predictions_of_the_registered_model_and_of_each_run(
    sweep, tmp_path, capsys, model_calls
):
    records = sweep["records"]
    rows = pd.DataFrame({"id": records["id"], "text": records["target_text"], "source_text": records["source_text"]})
    (version,) = sweep["client"].search_model_versions(f"name='{MODEL}'")
    expected = run_predictions(sweep, version.run_id)
    assert list(expected["id"]) == list(records["id"])  # the rows are the run's test records, in order

    out = predict(sweep, MODEL, rows, tmp_path, "registered.csv")
    assert list(out.columns) == ["id", "text", "source_text", "prediction"]
    assert out[["id", "text", "source_text"]].astype(str).equals(rows.astype(str))  # the input rows, passed through
    assert list(out["prediction"]) == list(expected["prediction"])
    line = wrote_line(capsys)
    assert line.startswith(f"wrote {TEST_RECORDS} predictions to ") and f"model {MODEL} version 1" in line
    out = predict(sweep, f"{MODEL}/{version.version}", rows, tmp_path, "version.tsv")
    assert list(out["prediction"]) == list(expected["prediction"])

    passes = {}
    for kind, run in sweep["children"].items():  # by run id; FLARE-MT reads no English side, so it needs none
        given = rows if kind == "flare" else rows.drop(columns=["source_text"])
        model_calls.clear()
        evaluation = rescored(sweep, run.info.run_id)
        out = predict(sweep, run.info.run_id, given, tmp_path, f"{kind}.jsonl")
        logged = list(run_predictions(sweep, run.info.run_id)["prediction"])
        assert list(out["prediction"]) == list(evaluation["prediction"]) == logged, kind
        same_pass(*model_calls)
        passes[kind] = model_calls[-1]
        assert ("English side" in wrote_line(capsys)) == (kind == "flare")
    assert "source_input_ids" in passes["flare"]["inputs"] and "mt_input_ids" in passes["flare_mt"]["inputs"]

    # FLARE reads the English side it is given: another one (NusaX's human English) changes what it computes.
    human = get_task(TaskConfig(name="nusax", language="jav", max_records={"test": TEST_RECORDS})).load("test")
    assert list(human["id"]) == list(records["id"]) and human["source_text"] != records["source_text"]
    model_calls.clear()
    predict(
        sweep,
        sweep["children"]["flare"].info.run_id,
        rows.assign(source_text=human["source_text"]),
        tmp_path,
        "human.csv",
    )
    (other,) = model_calls
    assert torch.equal(other["inputs"]["input_ids"], passes["flare"]["inputs"]["input_ids"])
    assert not torch.equal(other["logits"], passes["flare"]["logits"])


@pytest.mark.slow
def test_a_missing_english_side_is_translated_by_the_runs_nllb_once(sweep, tmp_path, monkeypatch, capsys, model_calls):
    records, run = sweep["records"], sweep["children"]["flare"]
    rows = pd.DataFrame({"text": records["target_text"]})
    cache = tmp_path / "cache"
    evaluation = rescored(sweep, run.info.run_id)
    out = predict(sweep, run.info.run_id, rows, tmp_path, "translated.jsonl", "--translation-cache", str(cache))
    assert len(out) == TEST_RECORDS and set(out["prediction"]) <= set(NusaX.labels)
    line = wrote_line(capsys)
    assert f"{TEST_RECORDS} of {TEST_RECORDS} texts new" in line

    (cached,) = cache.glob("*.parquet")
    provenance = json.loads(provenance_path(cached).read_text())
    assert (
        provenance["mt_model"]
        == json.loads(provenance_path(sweep["root"] / "mt" / "nusax" / "jav" / "test.parquet").read_text())["mt_model"]
    )  # the run's test split's translator
    assert provenance["source_nllb"] == "jav_Latn" and provenance["target_nllb"] == "eng_Latn"
    table = pd.read_parquet(cached)
    assert sorted(table["text"]) == sorted(set(records["target_text"]))
    # The same tiny NLLB, the same settings: the English side the run was tested on, and so what the model computes.
    english = dict(zip(table["text"], table["translation"]))
    assert [english[t] for t in records["target_text"]] == list(records["source_text"])
    assert (
        list(out["prediction"])
        == list(evaluation["prediction"])
        == list(run_predictions(sweep, run.info.run_id)["prediction"])
    )
    same_pass(*model_calls)

    # Again: everything comes from the cache, nothing is translated, the cache is not rewritten.
    stamp = cached.stat().st_mtime_ns
    monkeypatch.setattr(english_module, "translate_with_ray", no_model)
    again = predict(sweep, run.info.run_id, rows, tmp_path, "again.jsonl", "--translation-cache", str(cache))
    assert list(again["prediction"]) == list(out["prediction"]) and cached.stat().st_mtime_ns == stamp
    assert f"0 of {TEST_RECORDS} texts new" in capsys.readouterr().out


@pytest.mark.slow
def test_scores_are_the_class_probabilities_of_the_runs_own_predictions(sweep, tmp_path):
    records, run = sweep["records"], sweep["children"]["flare"]
    rows = pd.DataFrame({"text": records["target_text"], "source_text": records["source_text"]})
    out = predict(sweep, run.info.run_id, rows, tmp_path, "scored.csv", "--scores")
    columns = [f"p_{label}" for label in NusaX.labels]
    assert list(out.columns) == ["text", "source_text", "prediction", *columns]
    assert list(out["prediction"]) == list(run_predictions(sweep, run.info.run_id)["prediction"])
    probabilities = out[columns].astype(float)
    assert ((probabilities.sum(axis=1) - 1).abs() < 1e-5).all()
    assert [NusaX.labels[i] for i in probabilities.to_numpy().argmax(axis=1)] == list(out["prediction"])


@pytest.mark.slow
def test_the_console_is_quiet_and_the_libraries_output_is_in_the_log(sweep, tmp_path):
    """A fresh process, as a person runs it: two lines on the console (what was written, where the log is);
    the libraries' output (transformers' load report of the newly initialised head, warnings, the bitsandbytes
    kernel notice where this CPU gets one) only in the log file, and on the console with --verbose."""
    records = sweep["records"]
    source, output = tmp_path / "new.csv", tmp_path / "predicted.csv"
    write_rows(pd.DataFrame({"text": records["target_text"], "source_text": records["source_text"]}), source)
    command = [sys.executable, "-m", "flare_ray.predict", MODEL, "--input", str(source), "--output", str(output)]
    command += ["--tracking-uri", sweep["uri"]]
    quiet = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    log = output.with_suffix(".log")
    assert quiet.stderr == "", quiet.stderr
    assert quiet.stdout.splitlines() == [quiet.stdout.splitlines()[0], f"logs: {log}"], quiet.stdout
    assert quiet.stdout.startswith(f"wrote {TEST_RECORDS} predictions to {output}")
    noise = ("LOAD REPORT", "MISSING", "FutureWarning", "bitsandbytes", "Warning", "Traceback", "Loading weights")
    for text in noise:
        assert text not in quiet.stdout + quiet.stderr, text
    kept = log.read_text()
    assert "LOAD REPORT" in kept and "MISSING" in kept  # there was noise, and it went to the file

    loud = subprocess.run([*command, "--verbose"], capture_output=True, text=True, cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert "LOAD REPORT" in loud.stdout + loud.stderr

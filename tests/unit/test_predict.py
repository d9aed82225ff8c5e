"""``python -m flare_ray.predict``: every bad input is one line and exit status 2, before any model is loaded.
(On the adapters a real sweep registered: ``e2e/test_predict.py``.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

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
@pytest.fixture(scope="module")
def fake_store(tmp_path_factory):
    """An MLflow store with registered 'trials' (a trial_config.json, no weights), and its URI: one per task,
    one whose base model folder is gone, one written by a flare_ray whose schema differed. Read only."""
    tmp_path = tmp_path_factory.mktemp("fake-store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("fake", artifact_location=(tmp_path / "artifacts").as_uri())
    for task, language, name in (
        ("nusax", "jav", "nusax"),
        ("xnli", "sw", "xnli"),
        ("nusax", "jav", "gone"),
        ("nusax", "jav", "stale"),
    ):
        config = load_experiment(
            QUICKSTART, [f"storage_path={tmp_path}", f"task.name={task}", f"task.languages=[{language}]"]
        )
        record = config.model_dump(mode="json")
        if name == "gone":  # its base model was a folder, since deleted
            record["model"]["name_or_path"] = str(tmp_path / "deleted-model")
        if name == "stale":  # written by a flare_ray whose schema had a key this one has not
            record["method"]["xmixup"]["heads"] = None
        folder = tmp_path / f"adapter-{name}"
        folder.mkdir()
        (folder / "trial_config.json").write_text(json.dumps({"experiment": record, "language": language, "epoch": 1}))
        run = client.create_run(experiment)
        client.log_artifact(run.info.run_id, str(folder / "trial_config.json"), "adapter")
        register_best(client, run.info.run_id, f"fake-{name}-{language}", {})
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
        (
            "no_english_offline",
            r"in\.csv: no source_text column: FLARE reads the English side; add source_text \(the English text\), "
            r"or give --mt-model PATH .*: the default NLLB model, facebook/nllb-200-3\.3B, is no folder here, and not "
            r"in the local Hugging Face cache while the hub is offline \(HF_HUB_OFFLINE=1\)",
        ),
        (
            "no_english_unreachable",
            r"in\.csv: no source_text column: FLARE reads the English side; .*facebook/nllb-200-3\.3B, is no folder "
            r"here, not in the local Hugging Face cache, and the hub cannot be reached \(no network\)",
        ),
        ("mt_model_missing", r"--mt-model \S*no-nllb: no such folder; expected an NLLB-200 model folder"),
        (
            "base_model_gone",
            r"fake-gone-jav: its trial record's model\.name_or_path: '\S*deleted-model' does not exist",
        ),
        ("scores_column", r"in\.csv: column 'p_neutral' exists; --scores adds it"),
        (
            "stale_record",
            r"fake-stale-jav: its trial_config\.json is no trial record this flare_ray reads: "
            r"experiment\.method\.xmixup\.heads: Unexpected keyword argument \(1 problem; written by another version",
        ),
    ],
)
def test_bad_input_is_one_line_naming_the_file_and_column_before_any_model(
    tmp_path, fake_store, monkeypatch, capsys, case, expected
):
    monkeypatch.setattr(predictor_module, "build_trial", no_model)
    monkeypatch.setattr(english_module, "translate_with_ray", no_model)
    model, uri, output, extra = "fake-nusax-jav", fake_store, tmp_path / "out.csv", []
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
    elif case == "no_english_offline":  # a FLARE adapter, the target text alone, no NLLB model at hand
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    elif case == "no_english_unreachable":  # online, but the hub does not answer: told at once, not after retries
        import huggingface_hub

        def unreachable(*args, **kwargs):
            raise ConnectionError("no network")

        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", unreachable)
    elif case == "mt_model_missing":
        extra = ["--mt-model", str(tmp_path / "no-nllb")]
    elif case == "base_model_gone":
        model = "fake-gone-jav"
        pd.DataFrame({"text": ["Aku seneng"], "source_text": ["I am happy"]}).to_csv(source, index=False)
    elif case == "stale_record":
        model = "fake-stale-jav"
    elif case == "scores_column":
        pd.DataFrame({"text": ["Aku seneng"], "p_neutral": ["0.5"]}).to_csv(source, index=False)
        extra = ["--scores"]
    status = main([model, "--input", str(source), "--output", str(output), "--tracking-uri", uri, *extra])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert re.search(expected, err), err
    assert not output.exists() and not output.with_suffix(".log").exists()  # no log: nothing ran


def test_help_names_the_input_columns_of_every_task(capsys):
    text = " ".join(help_text(main, build_parser(), capsys).split())  # (argparse wraps the options' help)
    for columns in (
        "text; English side (optional): source_text",
        "premise, hypothesis",
        "source_premise, source_hypothesis",
        "question, context",
        "source_question, source_context",
        "--translation-cache",
        "$MLFLOW_TRACKING_URI",
        "NAME/VERSION (also models:/NAME/VERSION)",
        "run id of any trial (also runs:/RUN_ID)",
        "--scores",
        "p_<label>",
        "--verbose",
        "<output>.log",
        "--dry-run",
    ):
        assert columns in text, columns


def test_the_target_text_alone_for_flare_offline_is_one_line_before_torch_is_imported(tmp_path, fake_store):
    """The case of a new user's CSV (text only) on a FLARE adapter, offline, with no NLLB model at hand: one line
    and exit 2, in a fresh process that never imported torch, transformers or Ray (so no model could load)."""
    source = tmp_path / "new.csv"
    pd.DataFrame({"text": ["Aku seneng banget", "Ora enak"]}).to_csv(source, index=False)
    code = (
        "import sys\n"
        "from flare_ray.cli.predict import main\n"
        "status = main(sys.argv[1:])\n"
        "print('imported:', sorted(m for m in ('torch', 'transformers', 'ray', 'datasets') if m in sys.modules))\n"
        "sys.exit(status)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-hub-cache")}
    done = subprocess.run(
        [sys.executable, "-c", code, "fake-nusax-jav", "--input", str(source), "--output", str(tmp_path / "out.csv")]
        + ["--tracking-uri", fake_store],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
    assert "new.csv: no source_text column: FLARE reads the English side" in done.stderr
    assert "or give --mt-model PATH" in done.stderr and "facebook/nllb-200-3.3B" in done.stderr
    assert done.stdout.strip() == "imported: []", done.stdout


def test_a_failure_after_the_checks_is_one_line_and_its_traceback_is_in_the_log(
    tmp_path, fake_store, monkeypatch, capsys
):
    def broken(*args, **kwargs):
        raise RuntimeError("the base model's weights are damaged\nsecond line")

    monkeypatch.setattr(predictor_module, "build_trial", broken)
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": ["Aku seneng"], "source_text": ["I am happy"]}).to_csv(source, index=False)
    status = main(["fake-nusax-jav", "--input", str(source), "--output", str(output), "--tracking-uri", fake_store])
    captured = capsys.readouterr()
    log = output.with_suffix(".log")
    assert status == 1 and captured.out == "", captured
    assert captured.err == f"error: RuntimeError: the base model's weights are damaged (the traceback: {log})\n"
    assert "Traceback" in log.read_text() and "second line" in log.read_text()
    assert not output.exists()


def test_online_an_uncached_nllb_model_is_announced_before_it_is_downloaded(tmp_path, fake_store, monkeypatch, capsys):
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda *args, **kwargs: None)  # the hub answers
    monkeypatch.setattr(predictor_module, "english_sources", no_model)  # (no Ray, no translation)
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": ["Aku seneng"]}).to_csv(source, index=False)
    status = main(["fake-nusax-jav", "--input", str(source), "--output", str(output), "--tracking-uri", fake_store])
    first, *rest = capsys.readouterr().err.splitlines()
    assert first == (
        "note: no source_text column: the English side is translated by facebook/nllb-200-3.3B (not in the local "
        "Hugging Face cache: it is downloaded first); to avoid that, add the column or give --mt-model PATH"
    )
    assert status == 1 and rest[0].startswith("error: AssertionError: a model would be loaded here")  # (no_model)


def test_dry_run_checks_everything_and_loads_nothing(tmp_path, fake_store, monkeypatch, capsys):
    monkeypatch.setattr(predictor_module, "build_trial", no_model)
    source, output = tmp_path / "in.csv", tmp_path / "out.csv"
    pd.DataFrame({"text": ["Aku seneng"], "source_text": ["I am happy"]}).to_csv(source, index=False)
    argv = ["fake-nusax-jav", "--input", str(source), "--output", str(output), "--tracking-uri", fake_store]
    assert main([*argv, "--dry-run"]) == 0
    assert capsys.readouterr().out == (
        "dry run: 1 row to predict with model fake-nusax-jav version 1 (flare, nusax/jav; English side from "
        "source_text); nothing loaded or written\n"
    )
    assert not output.exists() and not output.with_suffix(".log").exists()
    pd.DataFrame({"text": ["Aku seneng"]}).to_csv(source, index=False)  # bad input: the same line as without it
    assert main([*argv, "--dry-run"]) == 2
    assert "in.csv: no source_text column: FLARE reads the English side" in capsys.readouterr().err

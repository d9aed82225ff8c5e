"""What a person meets in MLflow: child runs named by what their trial varies, with a description and the
selection's own value (``best/<metric>``, ``best/epoch``); the runs table's URL, which opens the runs (not
MLflow 3's GenAI pages) sorted by that value with the sweep's columns (a shared view, an experiment tag); the
command that starts the UI; the usage line of a registered model. Real MLflow records on a sqlite store, the
real Tune callback fed the results a trial reports (no Ray cluster)."""

from __future__ import annotations

import json
import os
import sys
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from mlflow.tracking import MlflowClient

from flare_ray.tracking import mlflow_runs
from flare_ray.tracking.callback import MLflowTrialCallback
from flare_ray.tracking.urls import predict_command, runs_url, runs_view, ui_command


def store(tmp_path) -> tuple[str, MlflowClient, str, str]:
    """A sweep's parent run on a fresh sqlite store: (tracking URI, client, parent run id, experiment id)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    search = {"metric": "validation/macro_f1", "mode": "max", "grid": {"method.flare.fusion": ["add", "mul"]}}
    parent = mlflow_runs.start_parent_run(
        client, "quickstart", "quickstart", {"search": {**search, "seeds": [0, 1]}}, "", {}, resume=False,
        artifact_location=(tmp_path / "artifacts").as_uri(),
    )  # fmt: skip
    return uri, client, parent, client.get_run(parent).info.experiment_id


def trial_results(callback, trial, results) -> None:
    for epoch, result in enumerate(results, start=1):
        callback.on_trial_result(epoch, [trial], trial, {"epoch": epoch, **result})
    callback.flush()


def test_a_child_run_says_what_it_is_and_carries_the_selections_value(tmp_path):
    uri, client, parent, _ = store(tmp_path)
    callback = MLflowTrialCallback(
        uri, parent, "jav", "validation/macro_f1", "max", str(tmp_path), search="quickstart-jav",
        label=lambda config: f"flare fusion={config['fusion']} seed={config['seed']}",
    )  # fmt: skip
    trial = SimpleNamespace(trial_id="4d590_00000", config={"fusion": "add", "seed": 1})
    # the last epoch is not the best (67.50 after 67.59): the selection uses the best, and so must the run
    scores = [60.0, 67.59, 67.50]
    final = {"final": True, "best_epoch": 2, "validation/macro_f1": 67.59, "test/macro_f1": 61.0}
    trial_results(callback, trial, [{"validation/macro_f1": s} for s in scores] + [{**final, "epoch": 3}])

    (run,) = mlflow_runs.child_runs(client, client.get_run(parent).info.experiment_id, parent)
    assert run.info.run_name == "jav flare fusion=add seed=1"
    description = run.data.tags["mlflow.note.content"]
    assert "\n" not in description and "4d590_00000" in description and "best/validation/macro_f1" in description
    assert run.data.metrics["validation/macro_f1"] == 67.50  # the last epoch's, as logged
    assert run.data.metrics["best/validation/macro_f1"] == 67.59 and run.data.metrics["best/epoch"] == 2
    assert run.data.metrics["test/macro_f1"] == 61.0


def test_a_trial_stopped_early_carries_its_best_so_far_and_min_mode_picks_the_lowest(tmp_path):
    uri, client, parent, experiment = store(tmp_path)
    callback = MLflowTrialCallback(
        uri, parent, "jav", "validation/loss", "min", str(tmp_path), label=lambda config: "lora"
    )
    trial = SimpleNamespace(trial_id="t_00001", config={})
    trial_results(callback, trial, [{"validation/loss": v} for v in (0.9, 0.7, 0.7, 0.8)])  # ASHA stopped it
    (run,) = mlflow_runs.child_runs(client, experiment, parent)
    assert run.data.metrics["best/validation/loss"] == 0.7 and run.data.metrics["best/epoch"] == 2  # the first 0.7
    history = client.get_metric_history(run.info.run_id, "best/validation/loss")
    assert [(m.step, m.value) for m in history] == [(1, 0.9), (2, 0.7), (3, 0.7), (4, 0.7)]


def test_without_a_label_a_run_keeps_its_trial_id_name(tmp_path):
    uri, client, parent, experiment = store(tmp_path)
    callback = MLflowTrialCallback(uri, parent, "jav", "validation/loss", "min", str(tmp_path))
    trial_results(callback, SimpleNamespace(trial_id="t_00002", config={}), [{"validation/loss": 1.0}])
    (run,) = mlflow_runs.child_runs(client, experiment, parent)
    assert run.info.run_name == "jav-t_00002" and "mlflow.note.content" not in run.data.tags


def test_the_runs_url_opens_the_sweeps_shared_view_of_the_runs_table(tmp_path):
    uri, client, parent, experiment = store(tmp_path)
    url = mlflow_runs.sweep_runs_url(client, uri, parent)
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "http://127.0.0.1:5000"  # what `make mlflow` serves
    route, _, query = parts.fragment.partition("?")
    assert route == f"/experiments/{experiment}/runs"
    params = parse_qs(query)
    assert params["workflowType"] == ["machine_learning"]  # not the GenAI pages, MLflow 3's default
    # the UI ignores a shared view where the URL has search parameters of its own
    assert set(params) == {"workflowType", "viewStateShareKey"}
    (key,) = params["viewStateShareKey"]
    view = json.loads(client.get_experiment(experiment).tags[f"mlflow.sharedViewState.{key}"])
    assert view["orderByKey"] == "metrics.`best/validation/macro_f1`" and view["orderByAsc"] is False
    assert view["selectedColumns"] == [
        "metrics.`best/validation/macro_f1`",
        "metrics.`best/epoch`",
        "metrics.`test/macro_f1`",
        "params.`method.flare.fusion`",
        "params.`training.seed`",
    ]
    # a resumed sweep, or another of the same search, writes the same view again: one tag
    mlflow_runs.start_parent_run(
        client, "quickstart", "quickstart", {"search": {"metric": "validation/macro_f1", "mode": "max",
        "grid": {"method.flare.fusion": ["add", "mul"]}, "seeds": [0, 1]}}, "", {}, resume=True,
    )  # fmt: skip
    views = [k for k in client.get_experiment(experiment).tags if k.startswith("mlflow.sharedViewState.")]
    assert views == [f"mlflow.sharedViewState.{key}"]


def test_a_minimised_metric_sorts_ascending_and_a_url_without_a_view_carries_the_sort():
    key, state = runs_view("validation/loss", "min", [])
    assert json.loads(state)["orderByAsc"] is True and key == runs_view("validation/loss", "min", [])[0]
    url = runs_url("sqlite:///x.db", "3", metric="validation/loss", mode="min")
    params = parse_qs(urlsplit(url).fragment.partition("?")[2])
    assert params == {
        "workflowType": ["machine_learning"],
        "orderByKey": ["metrics.`best/validation/loss`"],
        "orderByAsc": ["true"],
    }


def test_a_tracking_server_is_its_own_ui_and_its_credentials_stay_out():
    url = runs_url("https://alice:s3cret@mlflow.example.org:5000/", "7")
    assert url == "https://mlflow.example.org:5000/#/experiments/7/runs?workflowType=machine_learning"
    assert ui_command("https://alice:s3cret@mlflow.example.org:5000") == "https://mlflow.example.org:5000"
    assert "s3cret" not in predict_command("m/1", "http://alice:s3cret@h:5000")


def test_the_ui_command_works_as_typed_from_the_repository_root(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ui_command("sqlite:///outputs/mlflow.db") == "make mlflow"  # the quickstart's store
    assert ui_command(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}") == "make mlflow"
    other = ui_command("sqlite:////data/sweeps/mlflow.db")
    mlflow = os.path.relpath(os.path.join(os.path.dirname(sys.executable), "mlflow"))
    expected = mlflow if not mlflow.startswith("..") else os.path.join(os.path.dirname(sys.executable), "mlflow")
    store = "--backend-store-uri sqlite:////data/sweeps/mlflow.db"
    assert other == f"{expected} ui {store} --host 127.0.0.1 --port 5000 --app-name flare-ray"  # as `make mlflow`'s
    assert os.access(other.split()[0], os.X_OK)  # the command exists where it says


def test_the_predict_command_names_the_model_and_a_store_other_than_the_default():
    assert predict_command("quickstart-nusax-jav/2", "sqlite:///outputs/mlflow.db") == (
        "flare-ray predict quickstart-nusax-jav/2 --input rows.csv --output predicted.csv"
    )
    assert predict_command("q/1", "sqlite:////s/mlflow.db").endswith("--tracking-uri sqlite:////s/mlflow.db")


@pytest.mark.parametrize("mode", ["max", "min"])
def test_sorting_by_the_logged_value_agrees_with_the_selection(tmp_path, mode):
    """The runs table sorted by ``best/<metric>`` (what the URL asks for) puts the trial selection would pick
    first, where the last epoch's value would not."""
    uri, client, parent, experiment = store(tmp_path)
    callback = MLflowTrialCallback(uri, parent, "jav", "validation/loss", mode, str(tmp_path), label=lambda c: c["n"])
    # "a" has the best epoch of all; "b" the best last epoch
    curves = (
        {"a": [1.0, 10.0, 2.0], "b": [5.0, 6.0, 7.0]} if mode == "max" else {"a": [9.0, 1.0, 8.0], "b": [5.0, 4.0, 3.0]}
    )
    for name, curve in curves.items():
        trial = SimpleNamespace(trial_id=f"t_{name}", config={"n": name})
        trial_results(callback, trial, [{"validation/loss": v} for v in curve])
    order = "DESC" if mode == "max" else "ASC"
    by_best, by_last = (
        client.search_runs(
            [experiment], f"tags.`mlflow.parentRunId` = '{parent}'", order_by=[f"metrics.`{key}` {order}"]
        )
        for key in ("best/validation/loss", "validation/loss")
    )
    assert [r.info.run_name for r in by_best] == ["jav a", "jav b"]  # what selection compares: "a" first
    assert [r.info.run_name for r in by_last] == ["jav b", "jav a"]  # the last epoch's value would put "b" first

"""A sweep whose storage is S3 and whose tracking is an MLflow server, end to end: a real S3 API on localhost
(moto's server mode, ``s3_server``) and a real MLflow server whose artifacts go to it (``mlflow_server``),
both shared by the session. Stage 1, Tune's experiment state, the trials' checkpoints and the MLflow
artifacts all live in the bucket; the sweep is interrupted and resumed from there; nothing is written to the
working directory (no ``s3:`` folder made by ``pathlib``)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import QUICKSTART
from tests.sweeps import environment

pytestmark = [pytest.mark.slow, pytest.mark.ray]

BUCKET = "flare-sweeps"


def keys(prefix: str) -> list[str]:
    import boto3

    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def test_a_sweep_on_s3_with_an_mlflow_server_runs_resumes_and_keeps_everything_there(
    tmp_path, s3_server, mlflow_server
):
    import os

    storage = f"s3://{BUCKET}/sweeps"
    overrides = [
        "model.stage1=auto",
        "stage1.training={epochs: 1, batch_size: 16, max_length: 64}",
        "search.space={}",
        "search.num_samples=1",
        "search.seeds=[0, 1]",
        "search.scheduler=null",
        "search.max_concurrent_trials=1",
        "training.epochs=2",
        f"storage_path={storage}",
        f"tracking.tracking_uri={mlflow_server}",
        "tracking.experiment_name=remote",
    ]
    command = [sys.executable, "-m", "flare_ray.tune", str(QUICKSTART), *[x for o in overrides for x in ("--set", o)]]
    env = {**environment(), **{k: v for k, v in os.environ.items() if k.startswith(("AWS_", "MLFLOW_S3"))}}

    # 1. Interrupted (Ctrl-C) once the first trial has finished: its state is saved to the bucket.
    process = subprocess.Popen(
        command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    deadline = time.time() + 600
    while time.time() < deadline and not any(" done: " in line for line in lines):
        assert process.poll() is None, "".join(lines)[-3000:]
        time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    process.wait(timeout=300)
    reader.join(timeout=10)
    assert process.returncode == 130, "".join(lines)[-3000:]

    # 2. Resumed from the bucket.
    done = subprocess.run([*command, "--resume"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "stage 1: reused s3://flare-sweeps/sweeps/stage1/" in done.stdout
    assert list(tmp_path.iterdir()) == []  # nothing in the working directory

    stored = keys("sweeps/")
    (stage1_info,) = [k for k in stored if k.startswith("sweeps/stage1/") and k.endswith("/stage1.json")]
    stage1 = stage1_info.rsplit("/", 1)[0]
    assert f"{stage1}/adapter_config.json" in stored and f"{stage1}/adapter_model.safetensors" in stored
    assert any(k.startswith("sweeps/quickstart-jav/experiment_state") for k in stored)  # Tune's state, resumable
    checkpoints = [k for k in stored if "/checkpoint_" in k and k.endswith("adapter_model.safetensors")]
    assert checkpoints and all(k.startswith("sweeps/quickstart-jav/run_trial_") for k in checkpoints)

    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("remote")
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    (parent,) = [r for r in runs if "flare_ray.sweep" in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    trial_ids = [c.data.tags["flare_ray.trial_id"] for c in children]
    assert parent.info.status == "FINISHED" and parent.data.tags["stage1.path"] == f"s3://{BUCKET}/{stage1}"
    assert len(trial_ids) == len(set(trial_ids)) == 2  # no duplicate after the resume
    for child in children:
        assert child.info.status == "FINISHED" and "test/macro_f1" in child.data.metrics
        assert child.data.tags["best_checkpoint"].startswith(f"s3://{BUCKET}/sweeps/quickstart-jav/run_trial_")
        adapter = client.download_artifacts(child.info.run_id, "adapter/trial_config.json", str(tmp_path.parent))
        assert json.loads(open(adapter).read())["experiment"]["model"]["stage1"] == f"s3://{BUCKET}/{stage1}"
    artifacts = keys("mlartifacts/")
    assert sum(k.endswith("adapter/adapter_model.safetensors") for k in artifacts) == 2  # in the bucket
    assert any(k.endswith("report/report.md") for k in artifacts)

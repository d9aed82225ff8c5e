"""The cost estimate end to end: ``python -m flare_ray.tune --estimate`` on the small FLARE search (a LoRA and a
FLARE cell, one seed, an odd number of batches and gradient accumulation) on a local Ray and a real MLflow
store. The calibration runs first (a few steps of each setup, cached in the storage folder), the plan prints
the estimate, and at the end the parent run holds the estimate beside the actual and the console prints both.
The issue's test: the estimate's optimizer steps equal the trials' own (``train/optimizer_steps``, every epoch
of every child run). A second dry run with ``--estimate`` reads the cached calibrations and starts no Ray.
Slow (about a minute); CI runs it."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.helpers import REPO
from tests.sweeps import environment, mlflow_runs, tune_command

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SWEEP = [
    "training.epochs=2",
    "training.grad_accumulation=2",  # 40 records in batches of 16: 3 batches, 2 optimizer steps an epoch
    "task.max_records={train: 40, validation: 32, test: 32}",
    "search.scheduler=null",
    "search.space={}",
    "search.num_samples=1",
    "search.grid={method.kind: [lora, flare]}",
]


def test_the_estimate_counts_the_trials_own_steps_and_is_logged_beside_the_actual(tmp_path):
    done = subprocess.run(
        [*tune_command(tmp_path, *SWEEP), "--estimate"],
        env=environment(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "all: 2 trials, 4 epochs, 8 optimizer steps" in done.stdout
    assert "step time of tiny:xlm-roberta flare fp32 1 x (0.5 CPU, 0 GPU): " in done.stdout
    line = re.search(r"estimate: [^,]+, actual [^(]+\(([+-]\d+) %\)", done.stdout)
    assert line, done.stdout[-3000:]
    print(line.group(0))

    client, (parent,), children = mlflow_runs(tmp_path)
    steps = [
        m.value for child in children for m in client.get_metric_history(child.info.run_id, "train/optimizer_steps")
    ]
    assert len(children) == 2 and steps == [2.0] * 4  # each trial's two epochs
    metrics = parent.data.metrics
    assert metrics["estimate/steps"] == sum(steps) and metrics["estimate/trials"] == 2
    assert metrics["estimate/wall_seconds"] > 0 and metrics["estimate/actual_seconds"] == metrics["sweep/wall_seconds"]
    assert len(list((tmp_path / "estimates").glob("*.json"))) == 2  # lora and flare, calibrated once each

    again = subprocess.run(
        [*tune_command(tmp_path, *SWEEP), "--estimate", "--dry-run"],
        env=environment(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    assert "calibrated" not in again.stderr  # read from the cache: no calibration, no Ray
    assert "#   all: 2 trials, 4 epochs, 8 optimizer steps" in again.stdout and "wall time" in again.stdout

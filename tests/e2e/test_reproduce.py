"""The cost estimate and ``flare-ray reproduce``, end to end on one sweep: ``python -m flare_ray.tune --estimate`` on
the small FLARE search (a LoRA and a FLARE cell, seed 1, an odd number of batches and gradient accumulation) on a
local Ray and a real MLflow store, then one of its trials reproduced by its child run id, as a user runs it.

* **The estimate**: the calibration runs first (a few steps of each setup, cached in the storage folder), the plan
  prints the estimate, and at the end the parent run holds it beside the actual and the console prints both. The
  issue's test: the estimate's optimizer steps equal the trials' own (``train/optimizer_steps``, every epoch of every
  child run). A second dry run with ``--estimate`` reads the cached calibrations and starts no Ray.
* **Reproduction**: the LoRA trial (not the config's own method, so its values come from its run's records) runs
  again as a new one-trial sweep in the same experiment, its runs tagged ``flare_ray.reproduces``, its validation
  curve and test scores equal to the original's to 4 decimals (CPU, the same seed).

About 80 s; CI runs it."""

from __future__ import annotations

import re
import subprocess
import sys

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
    "search.seeds=[1]",
    "search.grid={method.kind: [lora, flare]}",
]


def run(command: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(command, env=environment(), cwd=REPO, capture_output=True, text=True, timeout=timeout)


def curve(client, run) -> list[float]:
    return [
        round(m.value, 4)
        for m in sorted(client.get_metric_history(run.info.run_id, "validation/macro_f1"), key=lambda m: m.step)
    ]


def test_the_estimate_counts_the_trials_steps_and_a_reproduced_trial_equals_its_original(tmp_path):
    done = run([*tune_command(tmp_path, *SWEEP), "--estimate"])
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

    again = run([*tune_command(tmp_path, *SWEEP), "--estimate", "--dry-run"], timeout=120)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "calibrated" not in again.stderr  # read from the cache: no calibration, no Ray
    assert "#   all: 2 trials, 4 epochs, 8 optimizer steps" in again.stdout and "wall time" in again.stdout

    (original,) = [c for c in children if c.data.tags["flare_ray.method"] == "lora"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = run([sys.executable, "-m", "flare_ray.cli.main", "reproduce", original.info.run_id, "--tracking-uri", uri])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "the same commit, packages, data and hardware as recorded" in done.stdout
    assert "reproduced: every score equal to 4 decimals" in done.stdout

    client, parents, children = mlflow_runs(tmp_path)
    tagged = [r for r in parents + children if r.data.tags.get("flare_ray.reproduces") == original.info.run_id]
    (parent,) = [r for r in tagged if "flare_ray.sweep" in r.data.tags]
    (copy,) = [r for r in tagged if r is not parent]
    assert parent.data.tags["flare_ray.sweep"].endswith(f"-reproduce-{original.info.run_id[:8]}")
    assert (copy.data.tags["flare_ray.method"], copy.data.params["training.seed"]) == ("lora", "1")
    assert len(curve(client, original)) == 2 and curve(client, copy) == curve(client, original)
    assert round(copy.data.metrics["test/macro_f1"], 4) == round(original.data.metrics["test/macro_f1"], 4)

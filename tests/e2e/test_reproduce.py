"""``flare-ray reproduce`` end to end: a sweep of two grid cells (fusion add and mul, seed 1) on a local Ray and a
real MLflow store, then one of its trials (not the config's own fusion, so its values come from its run's records)
reproduced by its child run id, as a user runs it: a new one-trial sweep in the same experiment, its runs tagged
``flare_ray.reproduces``, its validation curve and test scores equal to the original's to 4 decimals (CPU, the same
seed). About a minute; CI runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.sweeps import SHORT, environment, mlflow_runs, run_tune

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TWO_CELLS = [
    *SHORT,
    "search.space={}",
    "search.num_samples=1",
    "search.seeds=[1]",
    "search.grid={method.flare.fusion: [add, mul]}",
]


def curve(client, run) -> list[float]:
    return [
        round(m.value, 4)
        for m in sorted(client.get_metric_history(run.info.run_id, "validation/macro_f1"), key=lambda m: m.step)
    ]


def test_a_reproduced_trial_equals_its_original_and_is_tagged_with_it(tmp_path):
    run_tune(tmp_path, *TWO_CELLS)
    client, _, children = mlflow_runs(tmp_path)
    (original,) = [c for c in children if c.data.params["method.flare.fusion"] == "mul"]
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    done = subprocess.run(
        [sys.executable, "-m", "flare_ray.cli.main", "reproduce", original.info.run_id, "--tracking-uri", uri],
        env=environment(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert "the same commit, packages, data and hardware as recorded" in done.stdout
    assert "reproduced: every score equal to 4 decimals" in done.stdout

    client, parents, children = mlflow_runs(tmp_path)
    tagged = [r for r in parents + children if r.data.tags.get("flare_ray.reproduces") == original.info.run_id]
    (parent,) = [r for r in tagged if "flare_ray.sweep" in r.data.tags]
    (copy,) = [r for r in tagged if r is not parent]
    assert parent.data.tags["flare_ray.sweep"] == f"quickstart-reproduce-{original.info.run_id[:8]}"
    assert (copy.data.params["method.flare.fusion"], copy.data.params["training.seed"]) == ("mul", "1")
    assert len(curve(client, original)) == 2 and curve(client, copy) == curve(client, original)
    assert round(copy.data.metrics["test/macro_f1"], 4) == round(original.data.metrics["test/macro_f1"], 4)

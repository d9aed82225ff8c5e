"""The small version of the simulated scale benchmark (`benchmarks/sweep_scale.py`): 50 trials, 8 at once, on
two Ray nodes of this machine, against a local MLflow tracking server; the real sweep with only the training
replaced by a stand-in that reports like the recipe. It asserts what the sweep must get right at any scale
(one MLflow run per trial, none failed, the selection), never a time."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.sweeps import environment

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_fifty_simulated_trials_on_two_nodes_have_one_mlflow_run_each_and_the_best_is_selected(tmp_path):
    rows, results = tmp_path / "rows.json", tmp_path / "RESULTS.md"
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/sweep_scale.py",
            "--trials",
            "50",
            "--concurrent",
            "8",
            "--nodes",
            "2",
            "--results",
            str(results),
            "--json",
            str(rows),
        ],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [row] = json.loads(rows.read_text())
    assert row["tune_trials"] == 50 and row["failed_trials"] == 0 and row["failed_writes"] == 0
    # exactly one MLflow child run per trial, each finished (ASHA-stopped trials included)
    assert row["runs"] == 50 and row["trials_with_runs"] == 50 and row["duplicate_runs"] == 0
    assert row["finished_runs"] == 50
    # the selected trial is the one with the best reported validation score, and its adapter is registered
    assert row["selected_trial"] == row["best_trial"]
    assert row["selected_validation"] == pytest.approx(row["best_reported"])
    assert row["registered_version"] is not None
    assert "| 50 |" in results.read_text()

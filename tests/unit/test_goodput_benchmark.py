"""``benchmarks/goodput.py`` (issue 31's goodput row): it reads a finished sweep's goodput and time shares from the
parent run of a real MLflow store, the newest sweep by default (not a trial's run, which holds no ``sweep/*``), and
its table prints them as shares of the trials' wall time."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from benchmarks.goodput import read, table
from flare_ray.search.progress import TimeAccount


def _sweep(client: MlflowClient, experiment_id: str, steps: float) -> str:
    """A parent run with a sweep's figures (two trials of 100 s, ``steps`` of them in optimizer steps) and a trial's
    child run beside it."""
    account = TimeAccount(
        trials=2,
        phases={"startup": 40.0, "train_steps": steps, "validation": 160.0 - steps, "wall": 200.0},
        slots=2,
        wall=125.0,
    )
    parent = client.create_run(experiment_id).info.run_id
    for key, value in account.metrics().items():
        client.log_metric(parent, key, value)
    child = client.create_run(experiment_id, tags={"mlflow.parentRunId": parent}).info.run_id
    client.log_metric(child, "time/train_steps", steps / 2)
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One real store (its schema takes seconds to create): experiment ``quickstart`` with two sweeps (the older
    with 40 % goodput, the newer 60 %), experiment ``plain`` with a run that is no sweep's."""
    store = tmp_path_factory.mktemp("goodput") / "mlflow.db"
    client = MlflowClient(f"sqlite:///{store}")
    experiment_id = client.create_experiment("quickstart")
    runs = [_sweep(client, experiment_id, steps) for steps in (80.0, 120.0)]
    client.create_run(client.create_experiment("plain"))
    return store, runs


def test_reads_the_newest_sweeps_goodput_and_shares_and_tables_them(store):
    store, (older, newer) = store
    row = read(store)
    assert row["run_id"] == newer and row["trials"] == 2 and row["trial_seconds"] == 200.0
    assert row["goodput"] == pytest.approx(0.6) and row["slot_goodput"] == pytest.approx(120 / 250)
    assert row["shares"]["train_steps"] == pytest.approx(0.6) and row["shares"]["startup"] == pytest.approx(0.2)
    assert row["shares"]["validation"] == pytest.approx(0.2) and row["shares"]["test"] == 0.0
    assert read(store, run_id=older)["goodput"] == pytest.approx(0.4)
    text = table([read(store, run_id=older), row], labels=["before", "after"])
    lines = text.splitlines()
    assert "| goodput |" in lines[2] and "| start-up |" in lines[2]
    assert lines[4].startswith("| before | 2 | 3.3 | 40 % | 32 % | 20 % |")
    assert lines[5].startswith("| after | 2 | 3.3 | 60 % | 48 % | 20 % |")


def test_a_store_without_a_sweep_says_so(store):
    store, _ = store
    with pytest.raises(ValueError, match="no sweep's parent run with sweep/goodput"):
        read(store, experiment="plain")
    with pytest.raises(ValueError, match="no MLflow experiment 'other'"):
        read(store, experiment="other")

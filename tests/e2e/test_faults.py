"""Trials that scale and survive, on a Ray cluster of three nodes on this machine (``ray_cluster``, shared):
a trial's workers on different nodes, and faults injected on purpose (:mod:`flare_ray.training.faults`)
that the sweep must survive. Each sweep is ``python -m flare_ray.tune`` joining the cluster
(``RAY_ADDRESS``), as ``ray job submit`` would run it. Each fault test records one summary line (failures
injected, trials completed, MLflow runs, duplicates), repeated at the end of the pytest run.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.sweeps import ON_A_WORKER_NODE, ONE_TRIAL, finish, mlflow_runs, start, worker_nodes

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def results(storage: Path) -> list[dict]:
    """Every result Tune recorded for the sweep's trials (``result.json`` rows, in order)."""
    rows = []
    for path in sorted(storage.glob("quickstart-*/run_trial_*/result.json")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return rows


def wait_for(condition, process: subprocess.Popen, timeout: float = 300, every: float = 0.5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        assert process.poll() is None, process.stdout.read()[-3000:]
        time.sleep(every)
    raise AssertionError("timed out")


def duplicates(children) -> int:
    ids = [c.data.tags["flare_ray.trial_id"] for c in children]
    return len(ids) - len(set(ids))


def test_a_trial_of_two_workers_runs_them_on_two_nodes(tmp_path, two_worker_nodes):
    cluster = two_worker_nodes
    output = finish(
        start(tmp_path, cluster, *ONE_TRIAL, "training.epochs=2", "scaling.num_workers=2", *ON_A_WORKER_NODE)
    )
    assert "Best trials of sweep 'quickstart'" in output, output[-3000:]
    (log,) = tmp_path.glob("logs/quickstart-jav/*.log")
    workers = worker_nodes(log)
    assert sorted(rank for rank, _ in workers) == [0, 1], log.read_text()[-3000:]
    assert len({node for _, node in workers}) == 2  # the trial's two workers on two nodes
    assert {node for _, node in workers} <= {n.node_id for n in cluster.worker_nodes}
    _, _, children = mlflow_runs(tmp_path)
    assert len(children) == 1 and children[0].info.status == "FINISHED" and "test/macro_f1" in children[0].data.metrics
    # each rank scored half of validation, gathered: all 64 records' predictions are there
    client = mlflow_runs(tmp_path)[0]
    frame = client.download_artifacts(children[0].info.run_id, "predictions/validation.parquet", str(tmp_path))
    import pandas as pd

    assert len(pd.read_parquet(frame)) == 64


def test_a_killed_worker_restarts_its_trial_from_the_last_checkpoint(tmp_path, two_worker_nodes, fault_summary):
    """SIGKILL of the training worker in the middle of epoch 3; with search.worker_max_failures the Ray Train
    run restarts its worker and continues after the last checkpoint (the best epoch so far)."""
    marker = tmp_path / "killed"
    faults = {"kill_worker": {"epoch": 3, "step": 2, "marker": str(marker)}}
    process = start(
        tmp_path, two_worker_nodes, *ONE_TRIAL, "search.worker_max_failures=1", *ON_A_WORKER_NODE, faults=faults
    )
    output = finish(process)
    assert process.returncode == 0 and marker.exists(), output[-3000:]
    rows = [r for r in results(tmp_path) if "epoch" in r and not r.get("final")]
    before = rows[:2]  # epochs 1 and 2, reported before the kill
    assert [r["epoch"] for r in before] == [1, 2]
    best = max(before, key=lambda r: (r["validation/macro_f1"], -r["epoch"]))["epoch"]  # ties: the earlier epoch
    (resumed,) = [r for r in rows if "resumed_from_epoch" in r]
    assert resumed["resumed_from_epoch"] == best and resumed["epoch"] == best + 1
    assert rows[-1]["epoch"] == 3
    (log,) = tmp_path.glob("logs/quickstart-jav/*.log")
    assert len(worker_nodes(log)) == 2 and f"resumed from the checkpoint of epoch {best}" in log.read_text()
    _, _, children = mlflow_runs(tmp_path)
    done = [c for c in children if c.info.status == "FINISHED" and "test/macro_f1" in c.data.metrics]
    assert len(done) == len(children) == 1
    fault_summary(
        "kill a training worker",
        failures_injected=1,
        trials_completed=f"{len(done)}/1",
        mlflow_runs=len(children),
        duplicates=duplicates(children),
        resumed=f"at epoch {resumed['epoch']} from the checkpoint of epoch {best}",
    )


def test_a_removed_node_has_its_trial_rescheduled(tmp_path, two_worker_nodes, fault_summary):
    """The node running a trial leaves the cluster after the trial's first epoch; with search.max_failures the
    trial starts again on the other node, from its checkpoint."""
    cluster = two_worker_nodes
    process = start(tmp_path, cluster, *ONE_TRIAL, "training.epochs=12", "search.max_failures=1", *ON_A_WORKER_NODE)
    log = wait_for(lambda: next(iter(tmp_path.glob("logs/quickstart-jav/*.log")), None), process)
    wait_for(lambda: any(r.get("epoch") == 1 for r in results(tmp_path)), process)
    ((_, first_node),) = worker_nodes(log)
    (node,) = [n for n in cluster.worker_nodes if n.node_id == first_node]
    cluster.remove_node(node)
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    starts = worker_nodes(log)
    assert len(starts) == 2 and starts[1][1] != first_node  # on the other node
    rows = [r for r in results(tmp_path) if "epoch" in r and not r.get("final")]
    (resumed,) = [r for r in rows if "resumed_from_epoch" in r]
    assert resumed["resumed_from_epoch"] >= 1 and rows[-1]["epoch"] == 12
    _, _, children = mlflow_runs(tmp_path)
    done = [c for c in children if c.info.status == "FINISHED" and "test/macro_f1" in c.data.metrics]
    assert len(done) == len(children) == 1
    fault_summary(
        "remove a node",
        failures_injected=1,
        trials_completed=f"{len(done)}/1",
        mlflow_runs=len(children),
        duplicates=duplicates(children),
        resumed=f"at epoch {resumed['epoch']} on node {starts[1][1][:8]}",
    )


def test_a_killed_driver_resumes_without_duplicate_runs_or_lost_checkpoints(tmp_path, two_worker_nodes, fault_summary):
    """SIGKILL to the sweep's driver after its first trial finished (no chance to save anything); --resume
    finishes the sweep: one MLflow run per trial, every finished trial's checkpoint still there."""
    cluster = two_worker_nodes
    overrides = [
        "search.space={}",
        "search.num_samples=1",
        "search.seeds=[0, 1, 2]",
        "search.scheduler=null",
        "training.epochs=2",
        "search.max_concurrent_trials=1",
        *ON_A_WORKER_NODE,
    ]
    process = start(tmp_path, cluster, *overrides)
    wait_for(lambda: any(r.get("final") for r in results(tmp_path)), process)
    process.kill()  # SIGKILL
    finish(process)
    resumed = start(tmp_path, cluster, *overrides, resume=True)
    output = finish(resumed)
    assert resumed.returncode == 0, output[-3000:]
    client, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    done = [c for c in children if c.info.status == "FINISHED" and "test/macro_f1" in c.data.metrics]
    assert len(done) == len(children) == 3 and duplicates(children) == 0
    lost = 0
    for child in children:
        checkpoint = Path(child.data.tags["best_checkpoint"])
        lost += not (checkpoint / "adapter_model.safetensors").is_file()
        assert {"adapter/adapter_model.safetensors"} <= {
            a.path for a in client.list_artifacts(child.info.run_id, "adapter")
        }
    assert lost == 0
    fault_summary(
        "kill the sweep driver (SIGKILL), then --resume",
        failures_injected=1,
        trials_completed=f"{len(done)}/3",
        mlflow_runs=len(children),
        duplicates=duplicates(children),
        lost_checkpoints=lost,
    )


def test_a_trial_whose_loss_becomes_nan_is_stopped_and_ignored(tmp_path, two_worker_nodes, fault_summary):
    """Seed 1's loss becomes NaN at its second step: that trial stops at once, errored with the reason in Tune
    and in MLflow; seed 0 finishes and the selection is made from it alone."""
    overrides = [
        "search.space={}",
        "search.num_samples=1",
        "search.seeds=[0, 1]",
        "search.scheduler=null",
        "training.epochs=2",
        *ON_A_WORKER_NODE,
    ]
    process = start(tmp_path, two_worker_nodes, *overrides, faults={"nan_loss": {"seed": 1, "step": 2}})
    output = finish(process)
    assert process.returncode == 1, output[-3000:]  # a trial failed; the sweep was selected from the others
    (failed,) = [line for line in output.splitlines() if "FAILED:" in line]
    assert "seed=1" in failed and "nan at step 2 of epoch 1" in failed, failed
    client, parents, children = mlflow_runs(tmp_path)
    by_seed = {c.data.tags["flare_ray.seed"]: c for c in children}
    assert (
        by_seed["1"].info.status == "FAILED" and "nan at step 2 of epoch 1" in by_seed["1"].data.tags["flare_ray.error"]
    )
    assert not any(k.startswith("validation/") for k in by_seed["1"].data.metrics)  # stopped before any epoch ended
    assert by_seed["0"].info.status == "FINISHED" and "test/macro_f1" in by_seed["0"].data.metrics
    selected = parents[0].data.tags
    assert selected["best.jav.trial_id"] == by_seed["0"].data.tags["flare_ray.trial_id"], selected
    assert json.loads(selected["best.jav.seeds"]) == [0]
    fault_summary(
        "a trial's loss becomes NaN",
        failures_injected=1,
        trials_completed="1/2 (the NaN trial errored)",
        mlflow_runs=len(children),
        duplicates=duplicates(children),
        selected="seed 0 only",
    )


def test_a_worker_no_node_of_a_fixed_size_cluster_holds_is_an_error(tmp_path, two_worker_nodes, fault_summary):
    started = time.time()
    process = start(tmp_path, two_worker_nodes, *ONE_TRIAL, "scaling.cpus_per_worker=64")
    output = finish(process, timeout=120)
    took = time.time() - started
    assert process.returncode == 2, output[-3000:]
    assert (
        "a trial's worker asks for 64 CPU, 0 GPU" in output
        and "the largest of the cluster's 3 node(s) has 2 CPU" in output
    )
    assert "no autoscaler can add a node that holds it" in output
    assert not list(tmp_path.glob("quickstart-*/run_trial_*"))  # no trial started
    fault_summary(
        "resources no node of a fixed-size cluster holds",
        failures_injected=1,
        trials_completed=0,
        mlflow_runs=0,
        duplicates=0,
        exit_status=f"2 after {took:.1f} s",
    )

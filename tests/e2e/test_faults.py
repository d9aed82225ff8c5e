"""Trials that scale and survive, on a Ray cluster of three nodes on this machine (``ray_cluster``, shared):
a trial's workers on different nodes, and faults injected on purpose (:mod:`flare_ray.training.faults`)
that the sweep must survive. Each sweep is ``python -m flare_ray.tune`` joining the cluster
(``RAY_ADDRESS``), as ``ray job submit`` would run it. Each fault test records one summary line (failures
injected, trials completed, MLflow runs, duplicates), repeated at the end of the pytest run.
"""

from __future__ import annotations

import json
import re
import signal
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


def logged_epochs(client, child, key: str = "validation/macro_f1") -> list[int]:
    """The steps of a run's metric history, in order of step (an epoch logged twice appears twice)."""
    return sorted(m.step for m in client.get_metric_history(child.info.run_id, key))


def console_epochs(output: str) -> list[tuple[str, int]]:
    """The (trial id, epoch) of every per-epoch line the console printed, in order."""
    return [(trial, int(epoch)) for trial, epoch in re.findall(r"\((\w+)\)\s+epoch (\d+)/\d+ ", output)]


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
    run restarts its worker and continues after the last checkpoint (epoch 2: every epoch is checkpointed), with
    the best epoch so far (its adapter and score) carried in it."""
    marker = tmp_path / "killed"
    faults = {"kill_worker": {"epoch": 3, "step": 2, "marker": str(marker)}}
    process = start(
        tmp_path, two_worker_nodes, *ONE_TRIAL, "search.worker_max_failures=1", *ON_A_WORKER_NODE, faults=faults
    )
    output = finish(process)
    assert process.returncode == 0 and marker.exists(), output[-3000:]
    rows = [r for r in results(tmp_path) if "epoch" in r and not r.get("final")]
    trained = [r["epoch"] for r in rows if not r.get("replayed")]
    # epochs 1 and 2 were checkpointed before the kill; epoch 2's report may not have reached Tune before its
    # worker died. The restart continues after its checkpoint (no epoch trained twice) and first sends the results
    # of epochs 1 and 2 again, as first computed: a lost one reaches Tune and MLflow that way
    assert trained in ([1, 2, 3], [1, 3]) and [r["epoch"] for r in rows if r.get("replayed")] == [1, 2], rows
    first = {r["epoch"]: r for r in rows if not r.get("replayed")}
    for again in (r for r in rows if r.get("replayed") and r["epoch"] in first):
        assert again["validation/macro_f1"] == first[again["epoch"]]["validation/macro_f1"]
    lost = 3 - len(trained)
    before = [r for r in rows if r["epoch"] < 3]
    best = max(before, key=lambda r: (r["validation/macro_f1"], -r["epoch"]))["epoch"]  # ties: the earlier epoch
    (resumed,) = [r for r in rows if "resumed_from_epoch" in r and not r.get("replayed")]
    assert resumed["resumed_from_epoch"] == 2 and resumed["epoch"] == 3
    (log,) = tmp_path.glob("logs/quickstart-jav/*.log")
    assert len(worker_nodes(log)) == 2 and "resumed from the checkpoint of epoch 2 (the best so far" in log.read_text()
    assert sorted(epoch for _, epoch in console_epochs(output)) == [1, 2, 3]  # each epoch's line once
    client, _, children = mlflow_runs(tmp_path)
    done = [c for c in children if c.info.status == "FINISHED" and "test/macro_f1" in c.data.metrics]
    assert len(done) == len(children) == 1
    twice, logged = repeated_steps(client, children), logged_epochs(client, children[0])
    missing = len({1, 2, 3} - set(logged))
    assert twice == 0 and missing == 0, logged
    fault_summary(
        "kill a training worker",
        failures_injected=1,
        trials_completed=f"{len(done)}/1",
        mlflow_runs=len(children),
        duplicates=duplicates(children),
        resumed=f"at epoch {resumed['epoch']} from the checkpoint of epoch 2 (best so far: epoch {best})",
        results_lost_in_the_kill=f"{lost} (sent again after the restart)",
        epochs_logged_twice=twice,
        epochs_missing=missing,
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
    rows = [r for r in results(tmp_path) if "epoch" in r and not r.get("final") and not r.get("replayed")]
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


# -- a resumed sweep continues its trials from their latest epoch, each epoch logged once -----------------------------
IN_FLIGHT = [  # two trials at once (one per worker node)
    "search.space={}",
    "search.num_samples=1",
    "search.seeds=[0, 1]",
    "search.scheduler=null",
    "search.max_concurrent_trials=2",
    *ON_A_WORKER_NODE,
]


def trial_results(storage: Path) -> dict[str, list[dict]]:
    """Each trial's results as Tune recorded them (``result.json``), by trial folder name."""
    return {
        path.parent.name: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for path in sorted(storage.glob("quickstart-*/run_trial_*/result.json"))
    }


def reported_epochs(storage: Path) -> dict[str, int]:
    """The last epoch each trial reported, by trial folder name."""
    return {name: max((r.get("epoch", 0) for r in rows), default=0) for name, rows in trial_results(storage).items()}


def stored_epochs(storage: Path) -> dict[str, int]:
    """The epochs trained in each trial's newest checkpoint on storage (an earlier version's, written at a new
    best only, records the best epoch), by trial folder name."""
    out = {}
    for folder in storage.glob("quickstart-*/run_trial_*"):
        records = [json.loads((c / "trial_config.json").read_text()) for c in folder.glob("checkpoint_*")]
        out[folder.name] = max((r.get("trained_epochs", r["epoch"]) for r in records), default=0)
    return out


def resumed_from(storage: Path) -> dict[str, int]:
    """The epoch each trial's last restart continued after (0: none, or from scratch), by trial folder name (a
    result sent again after a restart, ``replayed``, keeps its first report's keys: not counted)."""
    return {
        name: ([r["resumed_from_epoch"] for r in rows if "resumed_from_epoch" in r and not r.get("replayed")] or [0])[
            -1
        ]
        for name, rows in trial_results(storage).items()
    }


def replayed_epochs(storage: Path) -> dict[str, list[int]]:
    """The epochs each trial's restarts sent again (``replayed``), in order, by trial folder name."""
    return {
        name: [r["epoch"] for r in rows if r.get("replayed") and not r.get("final")]
        for name, rows in trial_results(storage).items()
    }


def repeated_steps(client, children) -> int:
    """How many entries of the runs' metric histories repeat a step already logged for that metric."""
    repeated = 0
    for child in children:
        for key in child.data.metrics:
            steps = [m.step for m in client.get_metric_history(child.info.run_id, key)]
            repeated += len(steps) - len(set(steps))
    return repeated


def settled_epochs(storage: Path, quiet: float = 3.0, timeout: float = 60.0) -> dict[str, int]:
    """:func:`stored_epochs` once no new checkpoint has appeared for ``quiet`` seconds: a killed driver's trial
    processes train on (their results going nowhere) until Ray notices the driver is gone."""
    deadline, last, since = time.time() + timeout, stored_epochs(storage), time.time()
    while time.time() < deadline and time.time() - since < quiet:
        time.sleep(0.5)
        now = stored_epochs(storage)
        if now != last:
            last, since = now, time.time()
    return last


def two_trials_past_epoch_two(storage: Path):
    reported = reported_epochs(storage)
    return len(reported) == 2 and min(reported.values()) >= 2


def resume_in_flight(tmp_path, cluster, stop, case: str, fault_summary, epochs: int) -> None:
    """Two trials in flight, each past its second epoch; ``stop(process)`` stops the driver; --resume must continue
    each unfinished trial from its newest checkpoint on storage (not from epoch 1), and every MLflow curve must
    hold each epoch once: also an epoch whose checkpoint reached storage while its result never reached the
    driver (the restart sends the results its checkpoint holds again). ``epochs``: long enough that the trials are
    stopped part-way."""
    overrides = [*IN_FLIGHT, f"training.epochs={epochs}"]
    process = start(tmp_path, cluster, *overrides)
    wait_for(lambda: two_trials_past_epoch_two(tmp_path), process, every=0.2)
    stop(process)
    seen, stored = reported_epochs(tmp_path), settled_epochs(tmp_path)  # what the driver recorded; what reached storage
    output = finish(start(tmp_path, cluster, *overrides, resume=True))
    assert "Best trials of sweep 'quickstart'" in output, output[-3000:]
    # A trial whose newest checkpoint holds every epoch only scores the test split again (no epoch trained).
    restarted = {name: epoch for name, epoch in resumed_from(tmp_path).items() if stored[name] < epochs}
    assert restarted and all(restarted[n] == stored[n] >= seen[n] for n in restarted), (restarted, stored, seen)
    replayed = replayed_epochs(tmp_path)
    for name, rows in trial_results(tmp_path).items():  # no epoch trained twice; every epoch reached Tune
        trained = [r["epoch"] for r in rows if not r.get("final") and not r.get("replayed")]
        assert len(trained) == len(set(trained)), (name, trained)
        assert sorted(set(trained) | set(replayed[name])) == list(range(1, epochs + 1)), (name, trained, replayed)
        if name in restarted:  # its restart sent every epoch its checkpoint holds again, once
            assert replayed[name] == list(range(1, stored[name] + 1)), (name, replayed[name])
    printed = console_epochs(output)  # the resumed sweep's console: each epoch once, a lost one included
    assert len(printed) == len(set(printed)), printed
    client, _, children = mlflow_runs(tmp_path)
    done = [c for c in children if c.info.status == "FINISHED" and "test/macro_f1" in c.data.metrics]
    twice, missing = repeated_steps(client, children), 0
    for child in children:  # every epoch on record once (one whose result the stopped driver never received too)
        steps = logged_epochs(client, child)
        missing += len(set(range(1, epochs + 1)) - set(steps))
        assert steps == list(range(1, epochs + 1)), (child.data.tags["flare_ray.trial_id"], steps)
    assert twice == 0 and missing == 0 and len(done) == len(children) == 2 and duplicates(children) == 0
    lost = sum(stored[n] - seen[n] for n in stored)  # results that reached storage, not the driver: sent again
    fault_summary(
        case,
        failures_injected=1,
        trials_completed=f"{len(done)}/2",
        mlflow_runs=len(children),
        duplicates=duplicates(children),
        resumed=", ".join(
            f"from epoch {stored[n]} (epoch {seen[n]} recorded by the driver)" if n in restarted else "finished"
            for n in sorted(stored)
        ),
        results_lost_in_the_stop=f"{lost} (sent again on --resume)",
        epochs_logged_twice=twice,
        epochs_missing=missing,
        lost_checkpoints=sum(stored[n] - e for n, e in restarted.items()),
    )


def test_a_killed_driver_resumes_trials_in_flight_from_their_latest_epoch(tmp_path, two_worker_nodes, fault_summary):
    def kill(process):
        process.kill()  # SIGKILL: no chance to save anything
        finish(process)

    case = "kill the sweep driver (SIGKILL) with two trials in flight, then --resume"
    resume_in_flight(tmp_path, two_worker_nodes, kill, case, fault_summary, epochs=12)  # its trials train on
    # until Ray notices their driver is gone


def test_an_interrupted_sweep_resumes_its_trials_without_logging_an_epoch_twice(
    tmp_path, two_worker_nodes, fault_summary
):
    def interrupt(process):
        process.send_signal(signal.SIGINT)  # Ctrl-C: the searches save their state and stop
        output = finish(process)
        assert process.returncode == 130, output[-3000:]

    case = "Ctrl-C (SIGINT) to the sweep driver with two trials in flight, then --resume"
    resume_in_flight(tmp_path, two_worker_nodes, interrupt, case, fault_summary, epochs=12)  # the searches
    # save their state before they stop: the trials train on meanwhile


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one_on_resume(
    tmp_path, two_worker_nodes, fault_summary
):
    """SIGKILL to the driver with one trial past its third epoch, then its newest checkpoint's adapter cut in
    half: --resume passes over it, saying which file is wrong, continues from the checkpoint before, and the
    trial finishes with each epoch logged once."""
    overrides = [*ONE_TRIAL, "training.epochs=10", *ON_A_WORKER_NODE]  # stopped well before its end
    process = start(tmp_path, two_worker_nodes, *overrides)
    wait_for(lambda: max(reported_epochs(tmp_path).values(), default=0) >= 3, process, every=0.2)
    process.kill()
    finish(process)
    time.sleep(3)  # the trial's process goes with its driver
    (folder,) = tmp_path.glob("quickstart-*/run_trial_*")
    records = {c: json.loads((c / "trial_config.json").read_text()) for c in folder.glob("checkpoint_*")}
    assert not any(r.get("final") for r in records.values()), "the trial finished before the kill"
    trained = {r["trained_epochs"]: c for c, r in records.items()}
    newest = max(trained)
    assert newest >= 3 and newest - 1 in trained, sorted(trained)
    adapter = trained[newest] / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[: adapter.stat().st_size // 2])
    output = finish(start(tmp_path, two_worker_nodes, *overrides, resume=True))
    assert "Best trials of sweep 'quickstart'" in output, output[-3000:]
    (log,) = tmp_path.glob("logs/quickstart-jav/*.log")
    assert f"checkpoint {trained[newest]} is not usable" in log.read_text() and str(adapter) in log.read_text()
    (restart,) = resumed_from(tmp_path).values()
    assert restart == newest - 1
    client, _, children = mlflow_runs(tmp_path)
    (child,) = children
    assert child.info.status == "FINISHED" and "test/macro_f1" in child.data.metrics
    twice, missing = repeated_steps(client, children), len(set(range(1, 11)) - set(logged_epochs(client, child)))
    assert twice == 0 and missing == 0
    fault_summary(
        "newest checkpoint truncated after a killed driver, then --resume",
        failures_injected=2,
        trials_completed="1/1",
        mlflow_runs=len(children),
        duplicates=duplicates(children),
        resumed=f"from epoch {restart} (the truncated checkpoint held epoch {newest})",
        epochs_logged_twice=twice,
        epochs_missing=missing,
        lost_checkpoints="1 (the truncated one)",
    )

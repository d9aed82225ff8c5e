"""Trial drivers on the head: where a node offers the ``trial_driver`` resource (the head of every cluster in
cluster/), each trial's driver (Tune's trial actor, and the Ray Train controller beside it) runs there and
only the trial's worker runs on a GPU (here: worker) node, so that losing a worker node never takes a
driver with it. A cluster of its own: a head of 1 CPU offering the resource, one worker node of 2 CPUs."""

from __future__ import annotations

import pytest

from tests.helpers import free_port
from tests.sweeps import ON_A_WORKER_NODE, finish, mlflow_runs, start, worker_nodes

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def cluster_with_driver_head():
    import os

    from ray.cluster_utils import Cluster

    os.environ.update(
        RAY_TRAIN_V2_ENABLED="1",
        RAY_TRAIN_ENABLE_PRINT_PATCH="0",
        RAY_USAGE_STATS_ENABLED="0",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )

    # the dashboard answers the state API (which actor ran on which node)
    cluster = Cluster(
        initialize_head=True,
        connect=False,
        head_node_args={
            "num_cpus": 1,
            "resources": {"trial_driver": 1000},
            "include_dashboard": True,
            "dashboard_port": free_port(),
        },
    )
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def test_each_trial_driver_runs_on_the_head_and_its_worker_on_a_worker_node(tmp_path, cluster_with_driver_head):
    import ray
    from ray.util.state import list_actors

    cluster = cluster_with_driver_head
    overrides = [
        "search.space={}",
        "search.num_samples=2",
        "search.scheduler=null",
        "training.epochs=1",
        "search.max_concurrent_trials=1",
        *ON_A_WORKER_NODE,
    ]
    output = finish(start(tmp_path, cluster, *overrides))
    assert "Best trials of sweep 'quickstart'" in output, output[-3000:]
    assert "trial drivers: on the node offering 'trial_driver'" in output
    _, _, children = mlflow_runs(tmp_path)
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)

    head = cluster.head_node.node_id
    (worker_node,) = [n.node_id for n in cluster.worker_nodes]
    ray.init(address=cluster.address)
    try:
        actors = list_actors(detail=True, limit=10_000, raise_on_missing_output=False)
    finally:
        ray.shutdown()
    by_class: dict[str, set[str]] = {}
    for actor in actors:
        by_class.setdefault(actor.class_name, set()).add(actor.node_id)
    drivers = [a for a in actors if a.class_name == "ImplicitFunc"]
    assert 1 <= len(drivers) <= 2, by_class  # Tune's trial actors (the second trial may reuse the first's)
    assert len([a for a in actors if a.class_name == "TrainController"]) == 2, by_class  # one Train run per trial
    assert by_class["ImplicitFunc"] == {head} and by_class["TrainController"] == {head}, by_class
    assert by_class["RayTrainWorker"] == {worker_node}, by_class
    for log in tmp_path.glob("logs/quickstart-jav/*.log"):  # the worker says so in the trial's log too
        assert {node for _, node in worker_nodes(log)} == {worker_node}

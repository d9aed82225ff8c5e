"""A sweep joined to an autoscaling Ray cluster whose nodes cannot yet hold a trial's worker: it says it waits
(no error), the autoscaler adds a node of a type that holds the worker, and the trial runs there. The
cluster is Ray's own test cluster with the fake multi-node provider (``ray.cluster_utils.AutoscalingCluster``:
a head started with ``--autoscaling-config``, whose autoscaler starts real raylets as new nodes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from ray.cluster_utils import FAKE_HEAD_NODE_ID, AutoscalingCluster

from tests.sweeps import ONE_TRIAL, finish, mlflow_runs, start, worker_nodes

pytestmark = [pytest.mark.slow, pytest.mark.ray]


class LocalAutoscalingCluster(AutoscalingCluster):
    """The fake multi-node provider's cluster config written out here (the wheel does not ship the example
    file AutoscalingCluster reads its defaults from). Sweeps join it as ``RAY_ADDRESS=auto``."""

    address = "auto"  # the cluster `ray start` made on this machine

    def _generate_config(self, head_resources, worker_node_types, autoscaler_v2=False, **config_kwargs):
        head = {"resources": head_resources, "node_config": {}, "max_workers": 0}
        return {
            "cluster_name": "flare-ray-test",
            "max_workers": 2,
            "upscaling_speed": 1.0,
            "idle_timeout_minutes": 1,
            "provider": {
                "type": "fake_multinode",
                "use_node_id_as_ip": True,
                "disable_node_updaters": True,
                "disable_launch_config_check": True,
            },
            "available_node_types": {**worker_node_types, "ray.head.default": head},
            "head_node_type": "ray.head.default",
            "auth": {},
            "docker": {},
            "file_mounts": {},
            "cluster_synced_files": [],
            "file_mounts_sync_continuously": False,
            "rsync_exclude": [],
            "rsync_filter": [],
            "initialization_commands": [],
            "setup_commands": [],
            "head_setup_commands": [],
            "worker_setup_commands": [],
            "head_start_ray_commands": [],
            "worker_start_ray_commands": [],
            **config_kwargs,
        }


@pytest.fixture
def autoscaling_cluster(monkeypatch):
    # `ray start` (the head, and the nodes the autoscaler adds) from this environment's scripts
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "1")
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    cluster = LocalAutoscalingCluster(
        head_resources={"CPU": 1},
        worker_node_types={"cpu2": {"resources": {"CPU": 2}, "node_config": {}, "min_workers": 0, "max_workers": 1}},
    )
    cluster.start()
    yield cluster
    cluster.shutdown()


def test_a_worker_only_a_new_node_holds_waits_for_the_autoscaler(tmp_path, autoscaling_cluster):
    process = start(tmp_path, autoscaling_cluster, *ONE_TRIAL, "training.epochs=1", "scaling.cpus_per_worker=1.5")
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    assert (
        "waiting: a trial's worker asks for 1.5 CPU, 0 GPU (scaling.cpus_per_worker, scaling.gpus_per_worker / "
        "use_gpu), but the largest of the cluster's 1 node(s) has 1 CPU, 0 GPU; the cluster's autoscaler can add "
        "a node that holds it"
    ) in output
    (log,) = tmp_path.glob("logs/quickstart-jav/*.log")
    ((_, node),) = worker_nodes(log)
    assert node != FAKE_HEAD_NODE_ID  # it ran, on the node the autoscaler added
    _, _, (child,) = mlflow_runs(tmp_path)
    assert child.info.status == "FINISHED" and "test/macro_f1" in child.data.metrics

"""What the sweep learns of its Ray cluster (:mod:`flare_ray.search.cluster`): the node types an autoscaler can
add and how much it may add, from the cluster config in the GCS, the autoscaler's status or the bootstrap
config; and the private Ray APIs that say so, still where the module calls them."""

from __future__ import annotations

import dataclasses
import importlib
from types import SimpleNamespace

import pytest

from flare_ray.search import cluster
from flare_ray.search.cluster import autoscaling_capacity, autoscaling_node_types

MOVED = "Ray moved {}; update flare_ray/search/cluster.py (_ray_private_cluster_info)"


def private(module: str, name: str):
    """``module.name`` from Ray, or a failure that says Ray moved it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise AssertionError(f"{MOVED.format(f'{module}.{name}')}: {err}") from err


def test_the_private_ray_apis_the_cluster_probe_calls_are_where_it_calls_them():
    state = private("ray._private.state", "state")
    where = "ray._private.state.state.get_cluster_config"
    assert callable(getattr(state, "get_cluster_config", None)), MOVED.format(where)
    assert callable(private("ray.experimental.internal_kv", "_internal_kv_get")), MOVED.format("_internal_kv_get")
    key = private("ray._private.ray_constants", "DEBUG_AUTOSCALING_STATUS")
    assert key == cluster.AUTOSCALING_STATUS_KEY, MOVED.format(f"the autoscaler's status key (now {key!r})")
    # The shapes the module reads: the cluster config's node groups, and the node types in the autoscaler's status.
    pb2 = "ray.core.generated.autoscaler_pb2"
    config, node_group = private(pb2, "ClusterConfig"), private(pb2, "NodeGroupConfig")
    assert "node_group_configs" in config.DESCRIPTOR.fields_by_name, MOVED.format("ClusterConfig.node_group_configs")
    fields = set(node_group.DESCRIPTOR.fields_by_name)
    assert {"resources", "min_count", "max_count"} <= fields, MOVED.format("NodeGroupConfig's counts or resources")
    summary = private("ray.autoscaler._private.autoscaler", "AutoscalerSummary")
    fields = {f.name for f in dataclasses.fields(summary)}
    assert "node_type_mapping" in fields, MOVED.format("the autoscaler status's node_type_mapping")


def test_without_a_connected_ray_the_private_apis_say_nothing():
    assert cluster._ray_private_cluster_info() == ([], {})


def group(resources: dict, min_count: int, max_count: int) -> SimpleNamespace:
    return SimpleNamespace(resources=resources, min_count=min_count, max_count=max_count)


@pytest.fixture
def ray_says(monkeypatch, tmp_path):
    """Make the private APIs answer ``(groups, status)``; no bootstrap config on this machine."""
    monkeypatch.setattr(cluster, "BOOTSTRAP_CONFIG", tmp_path / "absent.yaml")

    def say(groups: list, status: dict | None = None) -> None:
        monkeypatch.setattr(cluster, "_ray_private_cluster_info", lambda: (groups, status or {}))

    return say


def test_the_node_types_the_autoscaler_can_add_come_from_the_cluster_config(ray_says):
    ray_says([group({"CPU": 4.0}, 1, 1), group({"CPU": 8.0, "GPU": 1.0}, 0, 2), group({"GPU": 4.0}, 0, -1)])
    assert autoscaling_node_types() == [{"CPU": 8.0, "GPU": 1.0}, {"GPU": 4.0}]  # a fixed group cannot grow
    assert autoscaling_capacity() == {"CPU": 16.0, "GPU": 2.0}  # unlimited groups say no count
    ray_says([group({"CPU": 4.0}, 2, 2)])
    assert autoscaling_node_types() is None


def test_an_autoscaler_status_naming_node_types_means_unknown_node_types(ray_says):
    ray_says([], {"autoscaler_report": {"node_type_mapping": {"10.0.0.1": "cpu2"}}})
    assert autoscaling_node_types() == [{}]
    ray_says([], {"autoscaler_report": {"node_type_mapping": {"10.0.0.1": "node_10.0.0.1"}}})  # plain `ray start`
    assert autoscaling_node_types() is None and autoscaling_capacity() is None


def test_a_bootstrap_config_beyond_the_limits_of_a_config_file_is_not_read(ray_says, tmp_path, caplog):
    """The launcher's config on the head node is read with the limits of every config file: aliases that
    would expand to billions of nodes are refused at once, with a warning, rather than exhausting memory."""
    ray_says([])
    laughs = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    laughs += [f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]" for i in range(8)]
    path = tmp_path / "ray_bootstrap_config.yaml"
    path.write_text("\n".join(laughs) + "\navailable_node_types: {gpu: {resources: {GPU: 1}, max_workers: 2}}\n")
    with caplog.at_level("WARNING", logger="flare_ray.search.cluster"):
        assert autoscaling_capacity(path) is None
    assert "not read" in caplog.text and "100,000 nodes" in caplog.text
    path.write_text("available_node_types: {gpu: {resources: {GPU: 1}, max_workers: 2}}\n")
    assert autoscaling_capacity(path) == {"GPU": 2.0}

"""The Ray cluster a sweep runs on, as Ray tells it (:func:`probe_cluster`): its live nodes, the node types its
autoscaler can still add, and so the resources a sweep may plan its concurrent trials on.

What an autoscaler may add has no public Ray API; Ray's private ones say it, all called in
:func:`_ray_private_cluster_info` (``tests/unit/test_cluster.py`` fails where Ray moves them), else the cluster
launcher's bootstrap config on the head node does.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

BOOTSTRAP_CONFIG = Path("~/ray_bootstrap_config.yaml")
"""Where the cluster launcher (``ray up``) leaves the cluster's config on its head node (Ray Tune's private
``_is_ray_cluster`` checks this file), node types' resources filled in from their instance types."""

AUTOSCALING_STATUS_KEY = "__autoscaling_status"
"""The GCS key under which the (v1) autoscaler publishes its status, what ``ray status`` prints."""


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster this command runs a sweep on, once Ray has started."""

    joined: bool
    """A cluster this command joined (``RAY_ADDRESS``, or a Ray already started), not a local Ray it started."""
    nodes: list[dict[str, float]]
    """The resources of each live node."""
    node_types: list[dict[str, float]] | None
    """The resources of each node type the autoscaler can still add (``{}``: unknown, may hold anything); None
    where the cluster never grows (the local Ray this command started, or a fixed-size cluster)."""
    resources: dict[str, float]
    """What a sweep may use at once: the cluster's resources now, plus all the autoscaler may add."""


def joins_a_cluster() -> bool:
    """Whether ``ray.init()`` joins a running cluster rather than start a local Ray: ``RAY_ADDRESS`` (set by
    ``ray job submit``) names one, or this process is already connected. Asked before Ray starts."""
    import ray

    return os.environ.get("RAY_ADDRESS", "local") != "local" or ray.is_initialized()


def probe_cluster(joined: bool) -> Cluster:
    """The cluster the started Ray runs on; ``joined``: :func:`joins_a_cluster`, asked before Ray started (the
    local Ray this command started never grows)."""
    import ray

    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    node_types = autoscaling_node_types() if joined else None
    # An autoscaling cluster holds more trials than its current nodes: as many at once as it may grow to.
    resources = dict(ray.cluster_resources())
    for key, value in ((autoscaling_capacity() or {}) if node_types is not None else {}).items():
        resources[key] = resources.get(key, 0.0) + value
    return Cluster(joined=joined, nodes=nodes, node_types=node_types, resources=resources)


def autoscaling_node_types() -> list[dict[str, float]] | None:
    """The resources of the node types the joined cluster's autoscaler can still add, or None for a fixed-size
    cluster. From the cluster config in the GCS where the platform publishes it (as Ray Data reads it), else
    ``[{}]`` (an autoscaler whose node types are unknown: any request may fit) where an autoscaler runs with
    a cluster config: the autoscaler's status in the GCS names its node types (a cluster started with plain
    ``ray start`` only has the read-only ``node_<id>`` ones), or the cluster launcher's bootstrap config is here."""
    groups, status = _ray_private_cluster_info()
    if groups:
        grows = lambda g: g.resources and (g.max_count == -1 or g.max_count > g.min_count)  # noqa: E731
        return [dict(g.resources) for g in groups if grows(g)] or None
    types = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    configured = any(kind != f"node_{node}" for node, kind in types.items())
    return [{}] if configured or BOOTSTRAP_CONFIG.expanduser().exists() else None


def autoscaling_capacity(bootstrap: Path | None = None) -> dict[str, float] | None:
    """The resources the joined cluster's autoscaler may add at most (every worker node type at its largest
    count), where Ray says: the cluster config in the GCS, else the cluster launcher's bootstrap config on
    this (head) node (``bootstrap``, by default :data:`BOOTSTRAP_CONFIG`). None where no node type says how
    many of it may come (then a sweep runs as many trials as its current nodes hold, or
    ``search.max_concurrent_trials``)."""
    total: dict[str, float] = {}

    def add(resources: dict, count: int) -> None:
        for key, value in (resources or {}).items():
            total[key] = total.get(key, 0.0) + float(value) * count

    groups, _ = _ray_private_cluster_info()
    for group in groups:
        if group.max_count > 0:
            add(dict(group.resources), group.max_count - group.min_count)
    path = bootstrap or BOOTSTRAP_CONFIG.expanduser()
    if not groups and path.is_file():
        config = _bootstrap_config(path)
        head = config.get("head_node_type")
        for name, kind in (config.get("available_node_types") or {}).items():
            if name != head:
                add(kind.get("resources"), int(kind.get("max_workers", 0)) - int(kind.get("min_workers", 0)))
    return total or None


def _bootstrap_config(path: Path) -> dict:
    """The cluster launcher's config, read within the limits of any config file (a file on the head node that
    anyone with access to it may have written); {} with a warning where it is not a YAML mapping within them."""
    from flare_ray.configfile import YAMLSyntaxError, parse_yaml, read_config_text

    try:
        config = parse_yaml(read_config_text(path), str(path))[0]
    except (OSError, YAMLSyntaxError) as err:
        log.warning("the cluster launcher's config is not read: %s", err)
        return {}
    return config if isinstance(config, dict) else {}


def _ray_private_cluster_info() -> tuple[list, dict]:
    """What only Ray's private APIs say about the joined cluster's autoscaler: the one place this project calls
    them (``tests/unit/test_cluster.py`` imports each of them and fails where Ray moves one).

    * the node groups of the cluster config in the GCS (``autoscaler_pb2.NodeGroupConfig``: ``resources``,
      ``min_count``, ``max_count``; ``-1``: unlimited), where the platform publishes it (nothing in Ray's own
      wheel does), read as Ray Data and Ray Train read it; ``[]`` where there is none;
    * the status the (v1) autoscaler publishes in the GCS (:data:`AUTOSCALING_STATUS_KEY`, what ``ray status``
      prints), ``{}`` where there is none.

    Both are empty where a call fails (Ray not connected, or the API changed at run time); the callers then fall
    back to the bootstrap config.

    Public APIs checked (Ray 2.60), none of which says what an autoscaler may add: ``ray.autoscaler.sdk`` only
    requests resources or drives ``ray up`` from a local cluster config file; ``ray.util.state`` lists the live
    nodes (needs the dashboard), not node types; ``ray.autoscaler.v2.sdk.get_cluster_status`` (not annotated
    public) reports nodes and pending demands, neither node types' resources nor their counts, and only under
    autoscaler v2. Ray's own libraries call ``ray._private.state.state.get_cluster_config`` for this too.
    The live nodes and current resources come from the public ``ray.nodes()`` and ``ray.cluster_resources()``;
    whether the cluster launcher made this cluster is a check of :data:`BOOTSTRAP_CONFIG` here, the file Ray
    Tune's private ``ray.tune.execution.cluster_info._is_ray_cluster`` checks.
    """
    import json

    import ray._private.state
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        groups = list(getattr(ray._private.state.state.get_cluster_config(), "node_group_configs", None) or [])
        status = json.loads(_internal_kv_get(AUTOSCALING_STATUS_KEY) or b"{}")
    except Exception:  # noqa: BLE001
        return [], {}
    return groups, status

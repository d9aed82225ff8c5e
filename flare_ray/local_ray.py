"""The Ray a command starts on this machine, when it joins no cluster, listens on 127.0.0.1 only.

Ray (2.60) binds each of its servers to the node's IP address where that is the loopback address, and to every
interface otherwise: the GCS, the raylet's node manager and object manager, each worker's gRPC server, the
runtime-env agent, the dashboard agent's gRPC, HTTP and Prometheus metrics ports. The dashboard listens on
``dashboard_host``. Left to itself, ``ray.init()`` on Linux takes the machine's outward address as the node's
(it even turns a ``_node_ip_address`` of 127.0.0.1 into it), so a local sweep's Ray listened on every interface
and its metrics port answered ``/metrics`` to anyone on the network. :func:`init_ray` starts it on 127.0.0.1;
a Ray that joins a cluster is left as Ray sets it up (its nodes must reach each other).

Every command that may start a Ray calls it: ``tune``, ``stage1`` and the translation job.
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOOPBACK = "127.0.0.1"


def starts_a_local_ray() -> bool:
    """Whether ``ray.init()`` would start a Ray of its own on this machine rather than join one, asked before Ray
    starts: this process is not connected to one already, ``RAY_ADDRESS`` names no cluster (unset, empty or
    ``local``) and no ``ray start`` left the address of one here (``ray_current_cluster`` in Ray's temporary
    folder, which ``ray.init()`` joins). Imports no Ray."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS", "")
    if address == "local":
        return True
    if address:
        return False
    temporary = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"  # as Ray finds it, on Linux
    return not Path(temporary, "ray", "ray_current_cluster").exists()


def init_ray(**kwargs) -> bool:
    """``ray.init(**kwargs)``: joins the cluster ``RAY_ADDRESS`` (or ``ray start``) names, or the Ray this
    process is connected to, as Ray does; else starts a Ray on this machine whose processes listen on
    :data:`LOOPBACK` only. Returns whether it started a local Ray."""
    import ray

    if not starts_a_local_ray():
        ray.init(**kwargs)
        return False
    with _node_ip_on_loopback():
        ray.init(address="local", _node_ip_address=LOOPBACK, dashboard_host=LOOPBACK, **kwargs)
    return True


@contextmanager
def _node_ip_on_loopback() -> Iterator[None]:
    """While Ray starts, its node's IP address is the loopback address.

    Ray takes 127.0.0.1 as the node's address only where its multi-node support is off
    (``ray._private.ray_constants.ENABLE_RAY_CLUSTER``, from ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER``, read once when
    Ray is imported; off by default on macOS and Windows, where Ray binds to loopback for this reason). The switch
    is turned back afterwards: a later ``ray.init()`` of this process that joins a cluster takes the outward
    address (a started Ray's processes are given the node's address on their command lines and never read it).
    ``tests/e2e/test_loopback.py`` fails where Ray moves it."""
    from ray._private import ray_constants

    if not hasattr(ray_constants, "ENABLE_RAY_CLUSTER"):  # a Ray that moved it: it listens where it chooses
        logging.getLogger(__name__).warning(
            "this Ray has no ray._private.ray_constants.ENABLE_RAY_CLUSTER: its node may listen beyond %s", LOOPBACK
        )
        yield
        return
    before = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before

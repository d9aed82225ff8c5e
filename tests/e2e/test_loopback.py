"""A sweep with no cluster to join starts a Ray that listens on 127.0.0.1 only (issue 28, item 3): every listening
socket of every process the sweep started (Ray's GCS, raylet, dashboard and its agent, the runtime-env agent,
the trials' workers and whatever they open while they train), watched with psutil while a real sweep runs."""

from __future__ import annotations

import ipaddress
import subprocess
import time

import psutil
import pytest

from tests.helpers import REPO
from tests.sweeps import ONE_TRIAL, environment, tune_command

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_ray_takes_loopback_as_the_node_address_while_it_starts():
    """The Ray switch :func:`~flare_ray.translate.local_ray.init_ray` turns (a private one) still makes Ray's node
    address the loopback address, and is turned back afterwards; no Ray started."""
    from ray._private import services

    from flare_ray.local_ray import LOOPBACK, _node_ip_on_loopback

    outward = services.get_node_ip_address()
    with _node_ip_on_loopback():
        assert services.resolve_ip_for_localhost(LOOPBACK) == LOOPBACK
    assert services.get_node_ip_address() == outward


def listening(root: psutil.Process) -> set[tuple[str, int, str]]:
    """(address, port, process name) of every listening TCP socket of ``root`` and its descendants."""
    found = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            name = process.name()
            for connection in process.net_connections(kind="tcp"):
                if connection.status == psutil.CONN_LISTEN:
                    found.add((connection.laddr.ip, connection.laddr.port, name))
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            continue
    return found


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or (ip.version == 6 and ip.ipv4_mapped is not None and ip.ipv4_mapped.is_loopback)


def test_a_local_sweep_listens_on_loopback_only(tmp_path):
    env = {**environment(), "RAY_ADDRESS": "local"}  # a Ray of its own even while another test's cluster runs
    command = tune_command(tmp_path, *ONE_TRIAL, "training.epochs=4")
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    root, seen = psutil.Process(process.pid), set()
    try:
        while process.poll() is None:  # the whole sweep: Ray's start, the trial's worker training, the end
            seen |= listening(root)
            time.sleep(0.3)
        output = process.stdout.read()
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output[-3000:]
    names = {name for _, _, name in seen}
    # not vacuous: Ray's own servers and a trial's processes were seen listening
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), sorted(seen)
    beyond = sorted(s for s in seen if not is_loopback(s[0]))
    assert not beyond, f"listening beyond loopback: {beyond}"

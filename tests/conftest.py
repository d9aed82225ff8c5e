"""Shared fixtures: tiny offline models (built once per session, no network), a local Ray, a Ray cluster of three
nodes, a local S3 API and MLflow server. Every test under ``e2e/`` is marked ``e2e``."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from tests.hub_cache import fake_hub_cache

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Offline, the pre-flight checks look hub models up in the local cache: one holding the config.json of the
# hub models the shipped YAMLs name (set before huggingface_hub is imported: it reads HF_HUB_CACHE once).
os.environ["HF_HUB_CACHE"] = str(fake_hub_cache(Path(tempfile.mkdtemp(prefix="flare_ray-hub-cache-"))))


def pytest_collection_modifyitems(items):
    from tests.helpers import TESTS  # not at the top: tests.helpers imports transformers (HF_HUB_CACHE set above)

    e2e = TESTS / "e2e"
    for item in items:
        if item.path.is_relative_to(e2e):
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session", autouse=True)
def _own_config_home(tmp_path_factory):
    """The sweeps of the tests (and their subprocesses) keep the key that signs their state
    (flare_ray.search.resume) in a folder of this test session, not in the user's ~/.config."""
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config-home"))
    os.environ.pop("FLARE_RAY_STATE_KEY", None)


@pytest.fixture(scope="session", autouse=True)
def _quiet_transformers():
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    """``tiny_path(arch)``: folder of the tiny ``arch`` checkpoint, built on first use."""
    from flare_ray.models.tiny import tiny_model_path

    root = tmp_path_factory.mktemp("tiny-models")
    return lambda arch: tiny_model_path(arch, cache_dir=root)


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray of 2 CPUs for the tests of one module (Train V2)."""
    import ray

    os.environ["RAY_TRAIN_V2_ENABLED"] = "1"
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        ignore_reinit_error=True,
    )  # a Ray of its own, even while a test module's cluster runs
    yield
    ray.shutdown()


_FAULT_SUMMARIES: list[str] = []


@pytest.fixture
def fault_summary():
    """``fault_summary(case, **counts)``: the fault-injection test's summary line, printed and repeated at the
    end of the run (``pytest_terminal_summary``)."""

    def record(case: str, **counts) -> str:
        line = f"fault {case}: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in counts.items())
        print(line)
        _FAULT_SUMMARIES.append(line)
        return line

    return record


def pytest_terminal_summary(terminalreporter):
    if _FAULT_SUMMARIES:
        terminalreporter.section("fault injection")
        for line in _FAULT_SUMMARIES:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def ray_cluster():
    """A Ray cluster of three nodes on this machine, shared by a module's multi-node and fault tests: a head of
    1 CPU and two worker nodes of 2 CPUs (``ray.cluster_utils.Cluster``; no autoscaler). A worker of 1.5 CPUs
    fits on a worker node only, one per node. Sweeps join it with ``RAY_ADDRESS=cluster.address``. While it
    runs, a plain ``ray.init()`` on this machine would join it too (Ray finds a running cluster), so it lives
    for one module, whose tests that need no cluster run before it starts."""
    from ray.cluster_utils import Cluster

    # The nodes' processes inherit these (the tune command sets them for a Ray it starts itself).
    os.environ.update(
        RAY_TRAIN_V2_ENABLED="1",
        RAY_TRAIN_ENABLE_PRINT_PATCH="0",
        RAY_USAGE_STATS_ENABLED="0",
        TOKENIZERS_PARALLELISM="false",
        HF_HUB_OFFLINE="1",
    )
    cluster = Cluster(initialize_head=True, connect=False, head_node_args={"num_cpus": 1, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


@pytest.fixture
def two_worker_nodes(ray_cluster):
    """The shared cluster with its two worker nodes (a test that removed one gets a new one before the next)."""
    while len(ray_cluster.worker_nodes) < 2:
        ray_cluster.add_node(num_cpus=2)
    ray_cluster.wait_for_nodes()
    return ray_cluster


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API on a free localhost port (moto's server mode) with the bucket ``flare-sweeps``; the AWS
    variables (credentials, region, ``AWS_ENDPOINT_URL``, read by pyarrow, boto3 and so MLflow) are set in
    this process for the session, so the sweeps and servers the tests start inherit them."""
    import sys

    from tests.helpers import free_port, served

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "MLFLOW_S3_ENDPOINT_URL": endpoint,
    }
    os.environ.update(env)
    log = tmp_path_factory.mktemp("s3") / "moto.log"
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with served(command, endpoint + "/moto-api/", dict(os.environ), log):
        import boto3

        boto3.client("s3").create_bucket(Bucket="flare-sweeps")
        yield endpoint


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server):
    """An MLflow tracking server on a free localhost port: runs in sqlite, artifacts proxied to the S3 API
    (``s3://flare-sweeps/mlartifacts``)."""
    import sys

    from tests.helpers import free_port, served

    port = free_port()
    folder = tmp_path_factory.mktemp("mlflow-server")
    url = f"http://127.0.0.1:{port}"
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        "s3://flare-sweeps/mlartifacts",
    ]
    with served(command, url + "/health", dict(os.environ), folder / "server.log", timeout=120):
        yield url

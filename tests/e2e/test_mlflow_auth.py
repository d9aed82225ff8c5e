"""The MLflow tracking server of cluster/, for real on localhost: ``cluster/mlflow/serve.sh`` (what the
compose file and the Kubernetes manifest run) with MLflow's basic-auth app, a sqlite backend instead of
PostgreSQL, and its artifacts proxied to a real S3 API (moto's server, ``s3_server``). The admin creates the
sweep's user; a short sweep logs to the server with that user's credentials from its environment (and no
S3 credentials: the server alone writes the bucket); a client without credentials, or with a wrong
password, is refused; and no param or tag of the sweep holds a credential."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from tests.helpers import QUICKSTART, REPO, free_port, served
from tests.sweeps import SHORT, environment

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SERVE = REPO / "cluster" / "mlflow" / "serve.sh"
USER = "flare"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, s3_server):
    folder = tmp_path_factory.mktemp("mlflow-auth")
    port = free_port()
    admin = secrets.token_hex(12)
    env = {
        **os.environ,
        "MLFLOW": str(Path(sys.executable).parent / "mlflow"),
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": str(port),
        "MLFLOW_WORKERS": "1",
        "TMPDIR": str(folder),
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{folder / 'basic_auth.db'}",
        "MLFLOW_ARTIFACTS_DESTINATION": "s3://flare-sweeps/auth-artifacts",
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(32),
    }
    url = f"http://127.0.0.1:{port}"
    with served(
        [shutil.which("sh") or "/bin/sh", str(SERVE)], url + "/health", env, folder / "server.log", timeout=180
    ):
        yield url, admin


def request(url: str, user: str | None = None, password: str | None = None) -> int:
    headers = {}
    if user is not None:
        headers["Authorization"] = "Basic " + b64encode(f"{user}:{password}".encode()).decode()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code


def test_a_sweep_logs_to_the_basic_auth_server_with_credentials_from_its_environment(tmp_path, auth_server):
    from mlflow.server.auth.client import AuthServiceClient
    from mlflow.tracking import MlflowClient

    url, admin = auth_server
    password = secrets.token_hex(12)
    os.environ.update(MLFLOW_TRACKING_USERNAME="admin", MLFLOW_TRACKING_PASSWORD=admin)
    try:  # the admin creates the sweep's user (cluster/README.md does the same)
        AuthServiceClient(url).create_user(USER, password)
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]

    search = f"{url}/api/2.0/mlflow/experiments/search?max_results=10"
    assert request(url + "/health") == 200  # for load balancers and the sweep's pre-flight check
    assert request(search) == 401  # no credentials
    assert request(search, USER, "wrong") == 401
    assert request(search, USER, password) == 200

    env = {k: v for k, v in environment().items() if not k.startswith(("AWS_", "MLFLOW_S3"))}  # no S3 access
    env.update(MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=password)
    overrides = [
        "search.space={}",
        "search.num_samples=1",
        *SHORT,
        f"storage_path={tmp_path / 'store'}",
        f"tracking.tracking_uri={url}",
        "tracking.experiment_name=auth",
    ]
    command = [sys.executable, "-m", "flare_ray.tune", str(QUICKSTART), *[x for o in overrides for x in ("--set", o)]]
    done = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    os.environ.update(MLFLOW_TRACKING_USERNAME=USER, MLFLOW_TRACKING_PASSWORD=password)
    try:
        client = MlflowClient(url)
        experiment = client.get_experiment_by_name("auth")
        runs = client.search_runs([experiment.experiment_id])
        (child,) = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        (parent,) = [r for r in runs if "flare_ray.sweep" in r.data.tags]
        assert child.info.status == "FINISHED" and "test/macro_f1" in child.data.metrics
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id, "adapter")}
        assert "adapter/adapter_model.safetensors" in artifacts  # uploaded through the server, into S3
        assert child.info.artifact_uri.startswith("mlflow-artifacts:")
        for run in (parent, child):  # nothing of the credentials in what the sweep logged
            logged = json.dumps([run.data.params, run.data.tags])
            assert password not in logged and admin not in logged
    finally:
        del os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]

    import boto3

    keys = [
        o["Key"]
        for o in boto3.client("s3").list_objects_v2(Bucket="flare-sweeps", Prefix="auth-artifacts/").get("Contents", [])
    ]
    assert any(k.endswith("adapter_model.safetensors") for k in keys)

    # The sweep's user cannot manage users; an anonymous MLflow client is refused.
    assert request(f"{url}/api/2.0/mlflow/users/get?username=admin", USER, password) == 403
    saved = {k: os.environ.pop(k) for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD") if k in os.environ}
    try:
        from mlflow.exceptions import MlflowException

        with pytest.raises(MlflowException, match="(?i)unauthorized|401|credentials"):
            MlflowClient(url).search_experiments()
    finally:
        os.environ.update(saved)

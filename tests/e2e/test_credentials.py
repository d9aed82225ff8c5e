"""No credential of a sweep's environment lands in a file: a one-trial sweep run with (fake) AWS keys and an
``MLFLOW_TRACKING_URI`` with a password, to a real MLflow server on localhost, leaves neither in any file of
Ray's session folder (Ray Tune used to copy the AWS keys into each trial's runtime environment, which Ray's
``runtime_env_agent.log`` prints), of the storage folder (Tune's saved callbacks), of the logs, or of the
MLflow store, nor on the console."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.helpers import QUICKSTART, REPO, free_port, served
from tests.sweeps import environment

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def files_holding(folder: Path, words: list[str]) -> list[str]:
    """``path: word`` for every regular file under ``folder`` holding one of ``words``."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path}: {word}" for word in words if word.encode() in data]
    return found


def test_a_sweep_leaves_no_credential_of_its_environment_in_any_file(tmp_path):
    fake = {
        "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
        "AWS_SECRET_ACCESS_KEY": secrets.token_hex(20),
        "AWS_SESSION_TOKEN": secrets.token_hex(24),
    }
    password = secrets.token_hex(12)
    store, port = tmp_path / "mlflow", free_port()
    store.mkdir()
    server = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    server += ["--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination", str(store / "a")]
    ray_tmp = Path(tempfile.mkdtemp(prefix="fr-", dir="/tmp"))  # short: Ray's socket paths are under it
    env = {
        **environment(),
        **fake,
        "MLFLOW_TRACKING_URI": f"http://flare:{password}@127.0.0.1:{port}",  # the server takes any credentials
        "RAY_TMPDIR": str(ray_tmp),  # Ray's session folder: <RAY_TMPDIR>/ray/session_*
    }
    overrides = ["search.space={}", "search.num_samples=1", "search.scheduler=null", "training.epochs=1"]
    overrides += [f"storage_path={tmp_path / 'store'}", "tracking.experiment_name=credentials"]
    command = [sys.executable, "-m", "flare_ray.tune", str(QUICKSTART), *[x for o in overrides for x in ("--set", o)]]
    server_env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_TRACKING"))}
    try:
        with served(server, f"http://127.0.0.1:{port}/health", server_env, tmp_path / "server.log", timeout=120):
            done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert f"http://flare:***@127.0.0.1:{port}" in done.stdout  # the run plan and the summary: redacted

        words = [*fake.values(), password]
        assert list(ray_tmp.glob("ray/session_*/logs/runtime_env_agent.log"))  # the folder searched is Ray's
        assert list((store / "a").rglob("adapter_model.safetensors"))  # and the store holds the trial's adapter
        console = (done.stdout + done.stderr).splitlines()
        found = [f"console: {line}" for line in console if any(word in line for word in words)]
        for folder in (ray_tmp, tmp_path / "store", store):  # the logs are in the storage folder (store/logs)
            found += files_holding(folder, words)
        assert not found, "\n".join(found)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)

"""The experiment YAML's ``tracking`` section and where it points (:func:`resolve_tracking_uri`); imports no
MLflow (the dry run shows the tracking URI without it)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from flare_ray.storage import local_folder


class TrackingSpec(BaseModel):
    """MLflow tracking."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(
        None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///<storage_path>/mlflow.db"
    )
    experiment_name: str | None = Field(None, description="MLflow experiment; null: the sweep name")


def resolve_tracking_uri(config, environ: dict[str, str] | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``tracking.tracking_uri``, else ``sqlite:///<storage>/mlflow.db``."""
    env = os.environ if environ is None else environ
    if env.get("MLFLOW_TRACKING_URI") or config.tracking.tracking_uri:
        return env.get("MLFLOW_TRACKING_URI") or config.tracking.tracking_uri
    folder = local_folder(config.storage_path)
    if folder is None:
        raise ValueError(
            f"storage_path {config.storage_path!r} is remote: set tracking.tracking_uri or MLFLOW_TRACKING_URI"
        )
    return f"sqlite:///{(folder / 'mlflow.db').as_posix()}"


class TrackingUnreachable(RuntimeError):
    """The MLflow tracking server does not answer."""


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """For a tracking server (``http(s)://``): raise :class:`TrackingUnreachable` unless it answers within
    ``timeout`` seconds (any HTTP answer counts, e.g. 401 from a server with auth). Local stores pass."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(tracking_uri.rstrip("/") + "/health", timeout=timeout).close()
    except urllib.error.HTTPError:
        return  # it answered
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnreachable(
            f"the MLflow tracking server {tracking_uri} does not answer ({reason}); start it (e.g. `mlflow server "
            "--host 127.0.0.1 --port 5000`), or set tracking.tracking_uri / MLFLOW_TRACKING_URI to one that runs"
        ) from None

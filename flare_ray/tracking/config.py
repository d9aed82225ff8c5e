"""The experiment YAML's ``tracking`` section and where it points (:func:`resolve_tracking_uri`); imports no
MLflow (the dry run shows the tracking URI without it)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from flare_ray.secrets import redact, without_userinfo
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
    """The MLflow tracking server does not answer, or what answers is no MLflow tracking server."""


class NotMLflow(TrackingUnreachable):
    """Something answers at the tracking URI, but not as an MLflow tracking server does (a wrong host, port or
    path): wrong wherever the sweep runs, unlike a server that does not answer here (it may from the cluster)."""


HEALTH = "/health"  # what every MLflow tracking server answers with 200 OK (mlflow.server, under its path prefix)


def check_reachable(tracking_uri: str, timeout: float = 5.0) -> None:
    """For a tracking server (``http(s)://``): raise :class:`TrackingUnreachable` unless it answers
    :data:`HEALTH` within ``timeout`` seconds as an MLflow tracking server does: 200, or a request for
    credentials (401, 403: a server with auth; whether the sweep's are right is MLflow's to say); any other
    answer (a 404: a wrong host, port or path; a proxy's 502), which would fail MLflow's client once the sweep
    has started, raises :class:`NotMLflow`. Local stores pass. The probe sends no credentials, and the error
    shows none."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(without_userinfo(tracking_uri).rstrip("/") + HEALTH, timeout=timeout).close()
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return  # it answered, and asks for credentials
        raise NotMLflow(
            f"no MLflow tracking server at {redact(tracking_uri)}: it answers HTTP {err.code} ({err.reason}) at "
            f"{HEALTH}, which an MLflow tracking server answers with 200 (a wrong host, port or path?); expected "
            "the URI of a running `mlflow server`, e.g. http://127.0.0.1:5000: set tracking.tracking_uri / "
            "MLFLOW_TRACKING_URI to it"
        ) from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise TrackingUnreachable(
            f"the MLflow tracking server {redact(tracking_uri)} does not answer ({redact(str(reason))}); start it "
            "(e.g. `mlflow server --host 127.0.0.1 --port 5000`), or set tracking.tracking_uri / "
            "MLFLOW_TRACKING_URI to one that runs"
        ) from None

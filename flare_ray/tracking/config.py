"""The experiment YAML's ``tracking`` section and where it points (:func:`resolve_tracking_uri`); imports no
MLflow (the dry run shows the tracking URI without it)."""

from __future__ import annotations

import os

from pydantic import BaseModel, ConfigDict, Field

from flare_ray.storage import local_folder


class TrackingSpec(BaseModel):
    """MLflow tracking."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///<storage_path>/mlflow.db")
    experiment_name: str | None = Field(None, description="MLflow experiment; null: the sweep name")


def resolve_tracking_uri(config, environ: dict[str, str] | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``tracking.tracking_uri``, else ``sqlite:///<storage>/mlflow.db``."""
    env = os.environ if environ is None else environ
    if env.get("MLFLOW_TRACKING_URI") or config.tracking.tracking_uri:
        return env.get("MLFLOW_TRACKING_URI") or config.tracking.tracking_uri
    folder = local_folder(config.storage_path)
    if folder is None:
        raise ValueError(f"storage_path {config.storage_path!r} is remote: set tracking.tracking_uri or MLFLOW_TRACKING_URI")
    return f"sqlite:///{(folder / 'mlflow.db').as_posix()}"

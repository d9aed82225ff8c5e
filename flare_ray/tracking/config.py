"""The experiment YAML's ``tracking`` section (resolved by :func:`flare_ray.tracking.mlflow_runs.resolve_tracking_uri`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class TrackingSpec(BaseModel):
    """MLflow tracking."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(None, description="null: $MLFLOW_TRACKING_URI, else sqlite:///<storage_path>/mlflow.db")
    experiment_name: str | None = Field(None, description="MLflow experiment; null: the sweep name")

"""The adapter to predict with: a registered model version or a run of MLflow. Its trial record
(``trial_config.json``: what the trial trained, so which columns it reads) comes first, alone, for the checks
before any model loads; its weights after them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare_ray.tracking import registry
from flare_ray.training.checkpoints import TRIAL_CONFIG_NAME

from .tables import PredictError


@dataclass
class Adapter:
    """A trial's adapter: where it is in MLflow, its trial record, and once downloaded, its folder."""

    folder: Path | None  # None until :func:`download_weights`
    run_id: str
    record: dict[str, Any]  # trial_config.json: {"experiment": ..., "language": ..., "epoch": ...}
    model_name: str | None = None
    version: str | None = None
    tracking_uri: str = ""
    artifact_path: str = ""

    @property
    def language(self) -> str:
        return self.record["language"]

    def describe(self) -> str:
        return f"model {self.model_name} version {self.version}" if self.model_name else f"run {self.run_id}"


def fetch_record(tracking_uri: str, reference: str, destination: Path) -> Adapter:
    """Resolve ``reference`` and download its ``trial_config.json`` alone into ``destination`` (no weights)."""
    from mlflow.artifacts import download_artifacts

    try:
        registry.check_tracking_uri(tracking_uri)
        run_id, path, name, version = registry.resolve_model(tracking_uri, reference)
    except registry.LookupFailed as err:
        raise PredictError(str(err)) from None
    try:
        record_path = Path(
            download_artifacts(
                run_id=run_id,
                artifact_path=f"{path}/{TRIAL_CONFIG_NAME}",
                tracking_uri=tracking_uri,
                dst_path=str(destination / "record"),
            )
        )
    except Exception as err:  # noqa: BLE001 - mlflow and the artifact stores raise many types
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise PredictError(
            str(
                registry.LookupFailed(
                    f"{reference}: run {run_id} has no {path}/{TRIAL_CONFIG_NAME} to download ({first}); "
                    "is it a flare_ray trial?"
                )
            )
        ) from None
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError) as err:
        raise PredictError(f"{reference}: its {TRIAL_CONFIG_NAME} is no JSON: {err}") from None
    return Adapter(None, run_id, record, name, version, tracking_uri, path)


def download_weights(adapter: Adapter, destination: Path) -> Path:
    """Download ``adapter``'s folder (its weights, and its record again) into ``destination``; its path."""
    from mlflow.artifacts import download_artifacts

    try:
        adapter.folder = Path(
            download_artifacts(
                run_id=adapter.run_id,
                artifact_path=adapter.artifact_path,
                tracking_uri=adapter.tracking_uri,
                dst_path=str(destination),
            )
        )
    except Exception as err:  # noqa: BLE001 - as above
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise PredictError(
            str(registry.LookupFailed(f"{adapter.describe()}: cannot download {adapter.artifact_path}/: {first}"))
        ) from None
    return adapter.folder

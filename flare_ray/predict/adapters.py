"""The adapter to predict with: a registered model version or a run of MLflow, downloaded with its trial record."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flare_ray.tracking import registry
from flare_ray.training.evaluate import TRIAL_CONFIG_NAME

from .tables import PredictError


@dataclass
class Adapter:
    """A trial's downloaded adapter folder, where it came from, and its trial record."""

    folder: Path
    run_id: str
    record: dict[str, Any]  # trial_config.json: {"experiment": ..., "language": ..., "epoch": ...}
    model_name: str | None = None
    version: str | None = None

    @property
    def language(self) -> str:
        return self.record["language"]

    def describe(self) -> str:
        return f"model {self.model_name} version {self.version}" if self.model_name else f"run {self.run_id}"


def fetch_adapter(tracking_uri: str, reference: str, destination: Path) -> Adapter:
    """Resolve ``reference`` and download its adapter folder (with ``trial_config.json``) into ``destination``."""
    try:
        run_id, folder, name, version = registry.download_adapter(tracking_uri, reference, destination)
    except registry.LookupFailed as err:
        raise PredictError(str(err)) from None
    record_path = folder / TRIAL_CONFIG_NAME
    if not record_path.is_file():
        raise PredictError(
            f"{reference}: run {run_id} has no {TRIAL_CONFIG_NAME} in its adapter; is it a flare_ray trial?"
        )
    return Adapter(folder, run_id, json.loads(record_path.read_text()), name, version)

"""The MLflow child run of every Tune trial: its hyperparameters, per-epoch curves, test scores and adapter.

:class:`MLflowTrialCallback` (a Ray Tune callback, on the Tune RunConfig) opens
a nested child run per trial, found again by the trial id on resume, so a
resumed sweep never duplicates runs.
"""

from __future__ import annotations

import math
from typing import Any

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import (
    CHECKPOINT_PATH_KEY,  # where Train's checkpoint path reaches Tune
)

from flare_ray.storage import local_copy
from flare_ray.tasks.metrics import better

from .mlflow_runs import ADAPTER_PATH, CHECKPOINT_TAG, LANGUAGE_TAG, TRIAL_TAG, find_run, log_params


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if "/" in key or key in {"epoch", "best_epoch"}:
            out[key] = float(value)
    return out


class MLflowTrialCallback(Callback):
    """One nested MLflow child run per Tune trial, with its curves and its best adapter."""

    def __init__(
        self, tracking_uri: str, parent_run_id: str, language: str, metric: str, mode: str, storage_path: str
    ) -> None:
        self.tracking_uri = tracking_uri
        self.storage_path = storage_path
        self.parent_run_id = parent_run_id
        self.language = language
        self.metric = metric
        self.mode = mode
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._best: dict[str, tuple[float, str | None]] = {}  # trial id -> (score, checkpoint path)

    @property
    def client(self) -> MlflowClient:
        return MlflowClient(self.tracking_uri)

    def run_id(self, trial: Trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        client = self.client
        parent = client.get_run(self.parent_run_id)
        experiment_id = parent.info.experiment_id
        found = find_run(client, experiment_id, {TRIAL_TAG: trial.trial_id, MLFLOW_PARENT_RUN_ID: self.parent_run_id})
        if found is not None:
            run_id = found.info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run = client.create_run(
                experiment_id,
                tags={
                    MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                    MLFLOW_RUN_NAME: f"{self.language}-{trial.trial_id}",
                    TRIAL_TAG: trial.trial_id,
                    LANGUAGE_TAG: self.language,
                },
            )
            run_id = run.info.run_id
            log_params(client, run_id, {**trial.config, "language": self.language})
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self.run_id(trial)

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        run_id = self.run_id(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = _metrics(result)
        if result.get("final"):  # the trial's summary: its test scores (validation curves are already logged)
            metrics = {k: v for k, v in metrics.items() if k.startswith("test/") or k == "best_epoch"}
        if metrics:
            now = int(1000 * result.get("timestamp", 0)) or 0
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        score, path = result.get(self.metric), result.get(CHECKPOINT_PATH_KEY)
        if isinstance(score, (int, float)) and path:
            best = self._best.get(trial.trial_id)
            if best is None or better(score, best[0], self.mode):
                self._best[trial.trial_id] = (float(score), path)

    def _finish(self, trial: Trial, status: str) -> None:
        run_id = self.run_id(trial)
        client = self.client
        best = self._best.get(trial.trial_id)
        if best is not None and best[1]:
            with local_copy(best[1], self.storage_path) as folder:
                client.log_artifacts(run_id, folder, ADAPTER_PATH)
            client.set_tag(run_id, CHECKPOINT_TAG, best[1])
        client.set_terminated(run_id, status=status)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._finish(trial, RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._finish(trial, RunStatus.to_string(RunStatus.FAILED))



"""The MLflow child run of every Tune trial: its hyperparameters, per-epoch curves, test scores and adapter.

:class:`MLflowTrialCallback` (a Ray Tune callback, on the Tune RunConfig) opens
a nested child run per trial, found again by the trial id on resume, so a
resumed sweep never duplicates runs.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import (
    CHECKPOINT_PATH_KEY,  # where Train's checkpoint path reaches Tune
)

from flare_ray.secrets import redact
from flare_ray.storage import is_remote, local_copy

from .mlflow_runs import ADAPTER_PATH, CHECKPOINT_TAG, LANGUAGE_TAG, PREDICTIONS_PATH, TRIAL_TAG, find_run, log_params

ERROR_TAG = "flare_ray.error"  # a failed trial's reason, on its MLflow run


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if "/" in key or key in {"epoch", "best_epoch"}:
            out[key] = float(value)
    return out


class MLflowTrialCallback(Callback):
    """One nested MLflow child run per Tune trial, with its curves, its best adapter and its predictions.

    Each child run is self-describing: ``describe`` (given by the search) turns the trial's Tune config into
    its whole resolved config, logged as flattened params, and its tags (method, seed, grid cell,
    configuration, config schema version); the language and trial id are tagged here. The run is created
    at the trial's first result, or when it fails: a trial that never reported and did not fail (e.g. started
    just before Ctrl-C) leaves no run behind.
    """

    def __init__(
        self, tracking_uri: str, parent_run_id: str, language: str, metric: str, mode: str, storage_path: str,
        describe: Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, str]]] | None = None,
    ) -> None:
        """``describe``: a trial's Tune config -> (its resolved config as nested params, its tags)."""
        self.tracking_uri = tracking_uri
        self.storage_path = storage_path
        self.parent_run_id = parent_run_id
        self.language = language
        self.metric = metric
        self.mode = mode
        self.describe = describe or (lambda config: (dict(config), {}))
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._checkpoints: dict[str, str] = {}  # trial id -> its latest (best) checkpoint

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
            params, tags = self.describe(trial.config)
            run = client.create_run(experiment_id, tags={
                **{k: redact(v) for k, v in tags.items()}, MLFLOW_PARENT_RUN_ID: self.parent_run_id, MLFLOW_RUN_NAME: f"{self.language}-{trial.trial_id}",
                TRIAL_TAG: trial.trial_id, LANGUAGE_TAG: self.language,
            })  # fmt: skip
            run_id = run.info.run_id
            log_params(client, run_id, {**params, "language": self.language})
        self._runs[trial.trial_id] = run_id
        return run_id

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        run_id = self.run_id(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = _metrics(result)
        if result.get("final"):  # the trial's summary: its test scores (validation curves are already logged)
            metrics = {k: v for k, v in metrics.items() if k.startswith("test/") or k == "best_epoch"}
        if metrics:
            now = int(1000 * result.get("timestamp", 0)) or 0
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        if result.get(CHECKPOINT_PATH_KEY):  # the loop checkpoints only a new best (and last the best again)
            self._checkpoints[trial.trial_id] = result[CHECKPOINT_PATH_KEY]  # a Ray Train run's, via Tune

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint, **info) -> None:
        self._checkpoints[trial.trial_id] = checkpoint.path  # a trial that trained in its own process

    def _finish(self, trial: Trial, status: str) -> None:
        client = self.client
        if trial.trial_id not in self._runs:  # a run of this trial from before a resume, or none: it never reported
            experiment_id = client.get_run(self.parent_run_id).info.experiment_id
            found = find_run(client, experiment_id, {TRIAL_TAG: trial.trial_id, MLFLOW_PARENT_RUN_ID: self.parent_run_id})
            if found is None:
                return
            self._runs[trial.trial_id] = found.info.run_id
        run_id = self._runs[trial.trial_id]
        path = self._checkpoints.get(trial.trial_id)
        if path:
            with local_copy(path, self.storage_path) as folder:
                folder = Path(folder)
                for item in sorted(folder.iterdir()):
                    if item.is_file():
                        client.log_artifact(run_id, str(item), ADAPTER_PATH)
                if (folder / PREDICTIONS_PATH).is_dir():
                    client.log_artifacts(run_id, str(folder / PREDICTIONS_PATH), PREDICTIONS_PATH)
            client.set_tag(run_id, CHECKPOINT_TAG, checkpoint_uri(path, self.storage_path))
        client.set_terminated(run_id, status=status)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._finish(trial, RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        # Why, on its MLflow run (the full trace is in the trial's error file); a trial that failed before its
        # first result (e.g. a NaN loss in the first epoch) gets its run here, so every failure is on record.
        self.client.set_tag(self.run_id(trial), ERROR_TAG, redact(trial_error(trial))[:5000])
        self._finish(trial, RunStatus.to_string(RunStatus.FAILED))


def checkpoint_uri(path: str, storage_path: str) -> str:
    """A checkpoint's path as Ray reports it, as a URI on remote storage (``s3://bucket/...``, where Ray gives
    the path within the bucket's filesystem); a local path as it is."""
    if "://" in path or not is_remote(storage_path):
        return path
    return f"{storage_path.split('://', 1)[0]}://{path}"


def trial_error(trial: Trial) -> str:
    """What Ray reported about a failed trial, in one line."""
    error = None
    try:  # Tune writes it in the trial's local folder first (and to its storage at the next sync)
        if trial.error_file and Path(trial.error_file).is_file():
            error = Path(trial.error_file).read_text()
        else:
            error = trial.get_error()
    except Exception:  # noqa: BLE001 - the message is best effort; the log has the rest
        pass
    if not error:
        return "no error was recorded"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in reversed(lines) if not line.startswith(("File ", "^", "~"))), type(error).__name__)
    return cause if len(cause) < 300 else cause[:297] + "..."

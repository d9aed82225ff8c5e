"""MLflow records of a sweep: one parent run, one nested child run per trial, the registry.

* The parent run (one per sweep, found again by its tag on ``--resume``) holds
  the resolved config, the search space, the git commit, package versions, the
  data provenance per language, and at the end the best trial per language.
* :class:`MLflowTrialCallback` (a Ray Tune callback, on the Tune RunConfig)
  opens a child run per trial (found again by the trial id on resume, so a
  resumed sweep never duplicates runs), logs its hyperparameters, the
  per-epoch curves, the test scores, and the best epoch's adapter as an artifact.
* :func:`register_best` registers a trial's adapter in the model registry.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import subprocess
from pathlib import Path
from typing import Any

from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY  # where Train's checkpoint path reaches Tune

from flare_ray.storage import local_copy

SWEEP_TAG = "flare_ray.sweep"
TRIAL_TAG = "flare_ray.trial_id"
LANGUAGE_TAG = "flare_ray.language"
ADAPTER_PATH = "adapter"
CHECKPOINT_TAG = "best_checkpoint"

PACKAGES = ("torch", "transformers", "peft", "ray", "mlflow", "optuna", "datasets", "bitsandbytes", "deepspeed")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(cwd: Path | None = Path(__file__).parent) -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _params(d: dict[str, Any]) -> dict[str, str]:
    return {k: str(v)[:6000] for k, v in flatten(d).items()}


def _find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]):
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def start_parent_run(
    client: MlflowClient,
    experiment_name: str,
    sweep: str,
    config: dict[str, Any],
    search_space: str,
    provenance: dict[str, Any],
    resume: bool,
    artifact_location: str | None = None,
) -> str:
    """The sweep's parent run id; on ``resume`` the existing one, so nothing is duplicated.

    ``artifact_location``: where a new experiment keeps its artifacts (adapters); ``None`` lets
    the tracking server decide. A local store needs it, or MLflow writes to ``./mlruns`` of
    whatever directory the sweep happens to run in.
    """
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = client.create_experiment(experiment_name, artifact_location=artifact_location)
    existing = _find_run(client, experiment_id, {SWEEP_TAG: sweep}) if resume else None
    if existing is not None:
        client.update_run(existing.info.run_id, status="RUNNING")
        return existing.info.run_id
    run = client.create_run(experiment_id, run_name=sweep, tags={SWEEP_TAG: sweep, "git_commit": git_commit()})
    run_id = run.info.run_id
    client.log_batch(run_id, params=[_param(k, v) for k, v in _params(config).items()])
    client.log_text(run_id, json.dumps(config, indent=2, default=str), "config.json")
    client.log_text(run_id, search_space, "search_space.txt")
    client.log_dict(run_id, provenance, "data_provenance.json")
    for name, version in versions().items():
        client.set_tag(run_id, f"version.{name}", version)
    return run_id


def _param(key: str, value: str):
    from mlflow.entities import Param

    return Param(key, value)


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
        found = _find_run(client, experiment_id, {TRIAL_TAG: trial.trial_id, MLFLOW_PARENT_RUN_ID: self.parent_run_id})
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
            params = {**_params(trial.config), "language": self.language}
            client.log_batch(run_id, params=[_param(k, v) for k, v in params.items()])
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
            from mlflow.entities import Metric

            now = int(1000 * result.get("timestamp", 0)) or 0
            self.client.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        score, path = result.get(self.metric), result.get(CHECKPOINT_PATH_KEY)
        if isinstance(score, (int, float)) and path:
            best = self._best.get(trial.trial_id)
            if best is None or (score > best[0] if self.mode == "max" else score < best[0]):
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


def register_best(client: MlflowClient, run_id: str, model_name: str, tags: dict[str, str]) -> str:
    """Register the adapter artifact of ``run_id``; returns the new version."""
    try:
        client.get_registered_model(model_name)
    except Exception:  # noqa: BLE001 - mlflow raises its own not-found error type
        client.create_registered_model(model_name)
    source = f"runs:/{run_id}/{ADAPTER_PATH}"
    version = client.create_model_version(model_name, source, run_id=run_id, tags=tags)
    return version.version


def log_stage1(client: MlflowClient, run_id: str, info: dict[str, Any]) -> None:
    """The stage-1 adapter a sweep's trials start from: where it is, its fingerprint, its English scores."""
    client.set_tag(run_id, "stage1.path", info["path"])
    client.set_tag(run_id, "stage1.fingerprint", info["fingerprint"])
    client.set_tag(run_id, "stage1.reused", str(info["reused"]).lower())
    client.log_metric(run_id, "stage1.best_epoch", info["best_epoch"])
    for key, value in info["english_validation"].items():
        client.log_metric(run_id, f"stage1.english_validation.{key}", value)
    client.log_dict(run_id, info, "stage1/stage1.json")

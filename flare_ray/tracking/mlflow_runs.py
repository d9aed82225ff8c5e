"""MLflow records of a sweep: one parent run, the child runs' lookup, the best trials, the registry.

* The parent run (one per sweep, found again by its tag on ``--resume``) holds
  the resolved config, the search space, the git commit, package versions, the
  data provenance per language, the hardware, the stage-1 adapter, and at the end the best
  trial per language (:func:`log_best`) and the averages (:func:`end_sweep`).
* The child runs, one per trial, are written by
  :class:`~flare_ray.tracking.callback.MLflowTrialCallback`.
* :func:`log_best` registers the best trial's adapter in the model registry.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from flare_ray.secrets import redact
from flare_ray.storage import join, local_folder

from .config import resolve_tracking_uri  # noqa: F401 - where the sweep and the report look it up (no MLflow there)
from .urls import SHARED_VIEW_TAG, predict_command, runs_url, runs_view

SWEEP_TAG = "flare_ray.sweep"
TRIAL_TAG = "flare_ray.trial_id"
LANGUAGE_TAG = "flare_ray.language"
SEARCH_TAG = "flare_ray.search"  # the search (one Tuner: a language and grid cell) a trial belongs to
METHOD_TAG = "flare_ray.method"  # method.kind
SEED_TAG = "flare_ray.seed"  # training.seed
SEED_REASON_TAG = "flare_ray.seed_reason"  # with adaptive seeds (search.seeds: {min, max}): why the trial ran
CELL_TAG = "flare_ray.cell"  # the grid cell, JSON {key.path: value} ({} without a grid)
CONFIGURATION_TAG = "flare_ray.configuration"  # what the trial varied besides its seed, JSON
ARM_TAG = "flare_ray.arm"  # an ablation's arm: 'baseline', or the key it changes and its value ('method.lora.r=16')
ATTENTION_TAG = "flare_ray.attn_implementation"  # the attention kernels the trial's model ran (eager, sdpa, ...)
SCHEMA_TAG = "flare_ray.schema_version"  # the experiment config's schema version (experiment.SCHEMA_VERSION)
ADAPTER_PATH = "adapter"
PREDICTIONS_PATH = "predictions"  # <split>.parquet: per-example predictions
CHECKPOINT_TAG = "best_checkpoint"
REPORT_PATH = "report"  # the sweep's report on its parent run
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"  # MLflow 3's UI opens a model-training experiment on its runs table
MODEL_TRAINING = "custom_model_development"
DESCRIPTION_TAG = "mlflow.note.content"  # a run's description in the UI
HARDWARE_PATH = "hardware.json"  # on the parent run: what the sweep's driver computes on (hardware())
VIEW_TAG = "flare_ray.runs_view"  # on the parent run: the key of its experiment's shared view of the runs table

PACKAGES = ("torch", "transformers", "peft", "ray", "mlflow", "optuna", "datasets", "bitsandbytes", "deepspeed")


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def hardware() -> dict[str, Any]:
    """What this machine (the sweep's driver) computes on: CPU model and count, GPU names, torch and CUDA
    versions; on the parent run (``hardware.json``), so ``flare-ray reproduce`` can say what differs."""
    import platform

    import torch  # a sweep has imported it already; the dry run never calls this

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    )
    return {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "gpus": gpus,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }


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


def log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Nested params flattened to dotted keys (values cut at MLflow's 6000 characters, URI passwords
    blanked: the config refuses them, but nothing logged should hold one)."""
    from mlflow.entities import Param

    items = [Param(k, redact(str(v))[:6000]) for k, v in flatten(params).items()]
    for start in range(0, len(items), 100):  # MLflow takes at most 100 params per request
        client.log_batch(run_id, params=items[start : start + 100])


def connect(tracking_uri: str) -> MlflowClient:
    """The MLflow client of a sweep's tracking store."""
    return MlflowClient(tracking_uri)


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]):
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=query, max_results=1)
    return runs[0] if runs else None


def child_runs(client: MlflowClient, experiment_id: str, parent: str) -> list:
    """Every child run of ``parent`` (all pages of the search)."""
    runs, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{parent}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def start_parent_run(
    client: MlflowClient,
    experiment_name: str,
    sweep: str,
    config: dict[str, Any],
    search_space: str,
    provenance: dict[str, Any],
    resume: bool,
    artifact_location: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """The sweep's parent run id; on ``resume`` the existing one, so nothing is duplicated.

    ``artifact_location``: where a new experiment keeps its artifacts (adapters); ``None`` lets
    the tracking server decide. A local store needs it, or MLflow writes to ``./mlruns`` of
    whatever directory the sweep happens to run in.
    """
    experiment = client.get_experiment_by_name(experiment_name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING)
    else:
        experiment_id = client.create_experiment(
            experiment_name, artifact_location=artifact_location, tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING}
        )
    view = share_runs_view(client, experiment_id, config.get("search", {}))
    existing = find_run(client, experiment_id, {SWEEP_TAG: sweep}) if resume else None
    if existing is not None:
        client.update_run(existing.info.run_id, status="RUNNING")
        client.set_tag(existing.info.run_id, VIEW_TAG, view)
        return existing.info.run_id
    run = client.create_run(
        experiment_id,
        run_name=sweep,
        tags={**(tags or {}), SWEEP_TAG: sweep, "git_commit": git_commit(), VIEW_TAG: view},
    )
    run_id = run.info.run_id
    log_params(client, run_id, config)
    client.log_text(run_id, json.dumps(config, indent=2, default=str), "config.json")
    client.log_text(run_id, search_space, "search_space.txt")
    client.log_dict(run_id, provenance, "data_provenance.json")
    client.log_dict(run_id, hardware(), HARDWARE_PATH)
    for name, version in versions().items():
        client.set_tag(run_id, f"version.{name}", version)
    return run_id


def share_runs_view(client: MlflowClient, experiment_id: str, search: dict[str, Any]) -> str:
    """The key of the experiment's shared view of its runs table for a sweep of ``search`` (the config's
    ``search`` section): sorted by the selection's value, with the columns of what it varies
    (:func:`flare_ray.tracking.urls.runs_view`), written as an experiment tag the UI reads."""
    ablated = (search.get("ablation") or {}).get("vary") or {}
    varied = [*search.get("grid", {}), *ablated, *search.get("space", {})] + (
        ["training.seed"] if search.get("seeds") else []
    )
    key, state = runs_view(search.get("metric"), search.get("mode", "max"), varied)
    client.set_experiment_tag(experiment_id, SHARED_VIEW_TAG + key, state)
    return key


def sweep_runs_url(client: MlflowClient, tracking_uri: str, parent: str, ui: str | None = None) -> str:
    """The browser URL of a sweep's runs table (its parent run ``parent``'s experiment), in the sweep's view
    where it wrote one (:func:`share_runs_view`): what the sweep and ``report`` print."""
    run = client.get_run(parent)
    return runs_url(tracking_uri, run.info.experiment_id, ui, view=run.data.tags.get(VIEW_TAG))


def register_best(
    client: MlflowClient, run_id: str, model_name: str, tags: dict[str, str], description: str | None = None
) -> str:
    """Register the adapter artifact of ``run_id``; returns the new version."""
    try:
        client.get_registered_model(model_name)
    except Exception:  # noqa: BLE001 - mlflow raises its own not-found error type
        client.create_registered_model(model_name)
    source = f"runs:/{run_id}/{ADAPTER_PATH}"
    version = client.create_model_version(model_name, source, run_id=run_id, tags=tags, description=description)
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


def artifact_location(tracking_uri: str, storage_path: str) -> str | None:
    """Where a new experiment of a local store keeps its artifacts: ``<storage>/mlartifacts``, not the
    ``./mlruns`` of whatever folder the sweep runs in. None: a tracking server decides."""
    folder = local_folder(storage_path)
    local_store = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    if not local_store:
        return None
    return (folder / "mlartifacts").as_uri() if folder is not None else join(storage_path, "mlartifacts")


def child_run(client: MlflowClient, parent: str, trial_id: str) -> str | None:
    """The child run of a trial of the sweep."""
    found = find_run(
        client, client.get_run(parent).info.experiment_id, {TRIAL_TAG: trial_id, MLFLOW_PARENT_RUN_ID: parent}
    )
    return found.info.run_id if found else None


def log_scores(client: MlflowClient, run_id: str, scores: dict[str, float]) -> None:
    """Scalar metrics in one request."""
    from mlflow.entities import Metric

    if not scores:
        return
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in scores.items()])


def log_best(client: MlflowClient, parent: str, config, best) -> str | None:
    """Tag the best configuration of a language on the parent run and register its best seed's adapter;
    the new version (None: the method trains no adapter).

    ``best``: a :class:`~flare_ray.search.summary.LanguageResult`.
    """
    prefix = f"best.{best.language}"
    client.set_tag(parent, f"{prefix}.trial_id", best.trial_id)
    client.set_tag(parent, f"{prefix}.run_id", best.run_id)
    client.set_tag(parent, f"{prefix}.hyperparameters", json.dumps(best.hyperparameters, default=str))
    client.set_tag(parent, f"{prefix}.seeds", json.dumps(best.seeds))
    log_scores(
        client,
        parent,
        {
            f"{prefix}.validation": best.validation,
            f"{prefix}.validation_std": best.validation_std,
            **{f"{prefix}.{k.replace('/', '.')}": v for k, v in best.test.items()},
        },
    )
    if "adapter_config.json" not in {
        a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(best.run_id, ADAPTER_PATH)
    }:
        return None
    tags = {
        "task": config.task.name,
        LANGUAGE_TAG: best.language,
        "metric": config.search.metric,
        "validation": f"{best.validation:.4f}",
        "hyperparameters": json.dumps(best.hyperparameters, default=str),
        "base_model": config.model.name_or_path,
        "method": config.method.kind,
        SEED_TAG: str(best.seed),
    }
    method = best.hyperparameters.get("method.kind", config.method.kind)
    tags["method"] = str(method)
    seeds = len(best.seeds)
    description = (
        f"{method} for {config.task.name}/{best.language}: the configuration {json.dumps(best.hyperparameters, default=str)}"
        f" was selected on the mean {config.search.metric} over {seeds} seed(s), {best.validation:.2f}"
        + (f" ± {best.validation_std:.2f} (std)" if seeds > 1 else "")
        + f"; this adapter is its best-validation seed (training.seed {best.seed}, {best.seed_validation:.2f})."
    )
    name = f"{config.name}-{config.task.name}-{best.language}"
    version = register_best(client, best.run_id, name, tags, description)
    command = predict_command(f"{name}/{version}", client.tracking_uri)
    usage = f"Use it: `{command}` (the input columns: flare-ray predict --help)."
    add_to_version_description(client, name, version, usage)
    client.set_tag(parent, f"{prefix}.registered_version", version)
    return version


def end_sweep(client: MlflowClient, parent: str, status: str, averages: dict[str, float] | None = None) -> None:
    """The sweep's averages over languages, and its parent run's status (FINISHED, KILLED, FAILED)."""
    log_scores(client, parent, {f"average/{k}": v for k, v in (averages or {}).items()})
    client.set_terminated(parent, status)


def log_report(client: MlflowClient, parent: str, files: list[Path], description: str) -> None:
    """A sweep's report files under ``report/`` of its parent run, and the run's description."""
    for path in files:
        client.log_artifact(parent, str(path), REPORT_PATH)
    client.set_tag(parent, DESCRIPTION_TAG, description)


def add_to_version_description(client: MlflowClient, name: str, version: str, text: str) -> None:
    """Append ``text`` to a registered model version's description (once)."""
    current = client.get_model_version(name, version).description or ""
    if text not in current:
        client.update_model_version(name, version, description=(current + "\n\n" + text).strip())

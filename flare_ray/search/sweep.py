"""The sweep: one Tune search per target language, selection, registry and the summary.

For each language: ``Tuner`` over :func:`~flare_ray.search.trial.run_trial` with
``OptunaSearch`` (the YAML's space, define-by-run, TPE) behind a
``ConcurrencyLimiter``, optional ASHA, trial-level ``FailureConfig`` and the
MLflow callback. ``--resume`` restores an interrupted search of the same name
(with the searcher's state) instead of starting a new one. Afterwards the best
trial per language (by the MT-validation metric over all its epochs) is tagged on
the parent run and its adapter registered in the MLflow model registry.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.tune
from mlflow.tracking import MlflowClient
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from flare_ray.experiment import ExperimentConfig, build_sampler, dry_run_text, make_define_by_run, resolve_tracking_uri
from flare_ray.tasks import get_task
from flare_ray.tracking.mlflow_runs import (
    CHECKPOINT_TAG,
    LANGUAGE_TAG,
    TRIAL_TAG,
    MLflowTrialCallback,
    log_stage1,
    register_best,
    start_parent_run,
)

from .trial import run_trial

log = logging.getLogger(__name__)


class SweepInterrupted(RuntimeError):
    """The search stopped before all its trials ended (Ctrl-C, a lost driver); ``--resume`` continues it."""


@dataclass
class LanguageResult:
    language: str
    trial_id: str
    run_id: str | None
    hyperparameters: dict[str, Any]
    validation: float
    test: dict[str, float]
    best_epoch: int | None
    trials: int
    registered: str | None = None


@dataclass
class SweepSummary:
    name: str
    metric: str
    tracking_uri: str
    experiment_name: str
    parent_run_id: str
    languages: list[LanguageResult] = field(default_factory=list)

    def average(self) -> dict[str, float]:
        keys = sorted({k for r in self.languages for k in r.test})
        out = {"validation": sum(r.validation for r in self.languages) / len(self.languages)}
        for k in keys:
            values = [r.test[k] for r in self.languages if k in r.test]
            if len(values) == len(self.languages):
                out[k] = sum(values) / len(values)
        return out

    def table(self) -> str:
        """The best trial per language: hyperparameters, MT-validation and gold-test scores, and the average."""
        test_keys = sorted({k for r in self.languages for k in r.test})
        header = ["language", "trial", self.metric, *test_keys, "best epoch", "hyperparameters"]
        rows = [
            [r.language, r.trial_id, f"{r.validation:.2f}", *(_fmt(r.test.get(k)) for k in test_keys),
             str(r.best_epoch), ", ".join(f"{k}={v}" for k, v in sorted(r.hyperparameters.items())) or "-"]
            for r in self.languages
        ]
        if len(self.languages) > 1:
            avg = self.average()
            rows.append(["average", "", f"{avg['validation']:.2f}", *(_fmt(avg.get(k)) for k in test_keys), "", ""])
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])

    def where(self) -> str:
        return (
            f"MLflow: experiment '{self.experiment_name}', parent run {self.parent_run_id}\n"
            f"  mlflow ui --backend-store-uri {self.tracking_uri}"
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def absolute_paths(config: ExperimentConfig) -> ExperimentConfig:
    """Trials run in their own working directories (and on other nodes): pin relative paths now."""
    data = config.model_dump(mode="json")
    data["storage_path"] = str(Path(config.storage_path).expanduser().resolve()) if "://" not in config.storage_path else config.storage_path
    for section, key in (("task", "data_dir"), ("task", "mt_dir"), ("model", "stage1")):
        if data[section].get(key) and data[section][key] != "auto":
            data[section][key] = str(Path(data[section][key]).expanduser().resolve())
    local = Path(config.model.name_or_path).expanduser()
    if local.exists():
        data["model"]["name_or_path"] = str(local.resolve())
    return ExperimentConfig.model_validate(data)


def run_sweep(config: ExperimentConfig, resume: bool = False) -> SweepSummary:
    config = absolute_paths(config)
    storage = Path(config.storage_path)
    storage.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(config)
    client = MlflowClient(tracking_uri)
    provenance = {lang: get_task(config.task.task_config(lang)).provenance() for lang in config.task.languages}
    local_store = tracking_uri.startswith(("sqlite:", "file:")) or "://" not in tracking_uri
    artifacts = (storage / "mlartifacts").as_uri() if local_store and "://" not in config.storage_path else None
    parent = start_parent_run(
        client, config.tracking.experiment_name, config.name, config.model_dump(mode="json"),
        dry_run_text(config), provenance, resume=resume, artifact_location=artifacts,
    )
    summary = SweepSummary(config.name, config.search.metric, tracking_uri, config.tracking.experiment_name, parent)
    try:
        if config.model.stage1 == "auto":
            config = _with_stage1(client, parent, config)
        elif config.model.stage1 is None and config.model.tiny_architecture is None:
            log.warning("model.stage1 is null: %s is adapted without the paper's English stage 1 "
                        "(model.stage1: auto trains it)", config.model.name_or_path)
        for language in config.task.languages:
            grid = _search(config, language, storage, tracking_uri, parent, resume)
            result = select_best(grid, config.search.metric, config.search.mode, language)
            result.run_id = _child_run(client, parent, result.trial_id)
            if result.run_id and not result.test:
                result.test = _score_stopped_trial(client, config, result)
            if result.run_id:
                result.registered = _register(client, config, result)
                _tag_parent(client, parent, result)
            summary.languages.append(result)
        for key, value in summary.average().items():
            client.log_metric(parent, f"average/{key}", value)
        client.set_terminated(parent, "FINISHED")
    except SweepInterrupted:
        client.set_terminated(parent, "KILLED")
        raise
    except BaseException:
        client.set_terminated(parent, "FAILED")
        raise
    return summary


def _with_stage1(client: MlflowClient, parent: str, config: ExperimentConfig) -> ExperimentConfig:
    """Train (or reuse) the stage-1 adapter, log it on the parent run, and point the trials at it."""
    from flare_ray.training.stage1 import ensure_stage1

    folder, info = ensure_stage1(config)
    scores = ", ".join(f"{k} {v:.2f}" for k, v in info["english_validation"].items())
    print(f"stage 1: {'reused' if info['reused'] else 'trained'} {folder} "
          f"(best epoch {info['best_epoch']}, English validation: {scores})")
    log_stage1(client, parent, info)
    data = config.model_dump(mode="json")
    data["model"]["stage1"] = str(folder)
    return ExperimentConfig.model_validate(data)


def _search(config: ExperimentConfig, language: str, storage: Path, tracking_uri: str, parent: str, resume: bool):
    search = config.search
    name = f"{config.name}-{language}"
    trainable = ray.tune.with_parameters(run_trial, experiment=config.model_dump(mode="json"), language=language)
    trainable = ray.tune.with_resources(trainable, {"CPU": 0.01})  # the driver only waits on its Train run
    path = storage / name
    if resume and ray.tune.Tuner.can_restore(str(path)):
        log.info("resuming %s from %s", name, path)
        tuner = ray.tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=True)
        return _finished(tuner.fit(), search.num_samples, name)
    searcher = OptunaSearch(
        space=make_define_by_run(config), sampler=build_sampler(search.sampler), metric=search.metric, mode=search.mode
    )
    if search.max_concurrent_trials:
        searcher = ConcurrencyLimiter(searcher, max_concurrent=search.max_concurrent_trials)
    scheduler = None
    if search.scheduler is not None:
        scheduler = ASHAScheduler(
            time_attr="epoch", metric=search.metric, mode=search.mode,
            max_t=config.training.epochs + 1,  # +1: the last epoch still reports its test scores
            grace_period=search.scheduler.grace_period,
            reduction_factor=search.scheduler.reduction_factor,
        )
    tuner = ray.tune.Tuner(
        trainable,
        tune_config=ray.tune.TuneConfig(
            search_alg=searcher, scheduler=scheduler,
            num_samples=search.num_samples, max_concurrent_trials=search.max_concurrent_trials,
        ),
        run_config=ray.tune.RunConfig(
            name=name,
            storage_path=str(storage),
            failure_config=ray.tune.FailureConfig(max_failures=search.max_failures),
            callbacks=[
                MLflowTrialCallback(tracking_uri, parent, language, search.metric, search.mode, config.storage_path)
            ],
            verbose=1,
        ),
    )
    return _finished(tuner.fit(), search.num_samples, name)


def _finished(grid, num_samples: int, name: str):
    """Tune returns normally when interrupted (SIGINT): tell that apart from a finished search."""
    if grid.num_terminated + grid.num_errors < num_samples:
        raise SweepInterrupted(
            f"search {name} stopped after {grid.num_terminated + grid.num_errors} of {num_samples} trials; "
            "its state is saved: run the same command with --resume to continue"
        )
    return grid


def select_best(grid, metric: str, mode: str, language: str) -> LanguageResult:
    """The trial with the best MT-validation score over all its epochs, and its gold-test scores."""
    best: tuple[float, Any, Any] | None = None
    for result in grid:
        if result.metrics_dataframe is None or metric not in result.metrics_dataframe:
            continue
        frame = result.metrics_dataframe.dropna(subset=[metric])
        if frame.empty:
            continue
        row = frame.loc[frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()]
        score = float(row[metric])
        if best is None or (score > best[0] if mode == "max" else score < best[0]):
            best = (score, result, row)
    if best is None:
        raise RuntimeError(f"no trial for {language} reported {metric}; see the trial errors above")
    score, result, row = best
    final = result.metrics or {}
    test = {k: float(v) for k, v in final.items() if k.startswith("test/") and isinstance(v, (int, float))}
    sampled = {k: v for k, v in (result.config or {}).items()}
    return LanguageResult(
        language=language,
        trial_id=final.get("trial_id") or str(row.get("trial_id")),
        run_id=None,
        hyperparameters=sampled,
        validation=score,
        test=test,
        best_epoch=int(row["epoch"]) if "epoch" in row and not _nan(row["epoch"]) else None,
        trials=len(grid),
    )


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _score_stopped_trial(client: MlflowClient, config: ExperimentConfig, result: LanguageResult) -> dict[str, float]:
    """ASHA stopped the best trial before its own test scoring: score its best adapter now, as a Ray task."""
    checkpoint = client.get_run(result.run_id).data.tags.get(CHECKPOINT_TAG)
    if not checkpoint:
        log.warning("best trial %s of %s has no checkpoint to score on the test split", result.trial_id, result.language)
        return {}
    from flare_ray.training.evaluate import score_checkpoint

    gpus = config.scaling.resources_per_worker()["GPU"]
    scores = ray.get(ray.remote(num_gpus=min(gpus, 1.0))(score_checkpoint).remote(checkpoint, config.storage_path))
    for key, value in scores.items():
        client.log_metric(result.run_id, key, value)
    return scores


def _child_run(client: MlflowClient, parent: str, trial_id: str) -> str | None:
    experiment_id = client.get_run(parent).info.experiment_id
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`{TRIAL_TAG}` = '{trial_id}' and tags.`mlflow.parentRunId` = '{parent}'"
    )
    return runs[0].info.run_id if runs else None


def _register(client: MlflowClient, config: ExperimentConfig, result: LanguageResult) -> str | None:
    artifacts = [a.path for a in client.list_artifacts(result.run_id)]
    if "adapter" not in artifacts:
        log.warning("best trial %s of %s has no adapter artifact; not registered", result.trial_id, result.language)
        return None
    tags = {
        "task": config.task.name, LANGUAGE_TAG: result.language, "metric": config.search.metric,
        "validation": f"{result.validation:.4f}", "hyperparameters": json.dumps(result.hyperparameters, default=str),
        "base_model": config.model.name_or_path, "method": config.method.kind,
    }
    return register_best(client, result.run_id, f"{config.name}-{config.task.name}-{result.language}", tags)


def _tag_parent(client: MlflowClient, parent: str, result: LanguageResult) -> None:
    prefix = f"best.{result.language}"
    client.set_tag(parent, f"{prefix}.trial_id", result.trial_id)
    client.set_tag(parent, f"{prefix}.run_id", result.run_id)
    client.set_tag(parent, f"{prefix}.hyperparameters", json.dumps(result.hyperparameters, default=str))
    client.log_metric(parent, f"{prefix}.validation", result.validation)
    for key, value in result.test.items():
        client.log_metric(parent, f"{prefix}.{key.replace('/', '.')}", value)
    if result.registered:
        client.set_tag(parent, f"{prefix}.registered_version", result.registered)

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

import logging

import ray.tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from flare_ray.experiment import DefineByRun, ExperimentConfig, build_sampler
from flare_ray.storage import join, local_folder
from flare_ray.tasks import get_task
from flare_ray.tracking import mlflow_runs
from flare_ray.tracking.callback import MLflowTrialCallback

from .plan import dry_run_text
from .summary import LanguageResult, SweepSummary, select_best
from .trial import run_trial, score_checkpoint

log = logging.getLogger(__name__)


class SweepInterrupted(RuntimeError):
    """The search stopped before all its trials ended (Ctrl-C, a lost driver); ``--resume`` continues it."""


def run_sweep(config: ExperimentConfig, resume: bool = False) -> SweepSummary:
    folder = local_folder(config.storage_path)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    tracking_uri = mlflow_runs.resolve_tracking_uri(config)
    client = mlflow_runs.connect(tracking_uri)
    provenance = {lang: get_task(config.task.task_config(lang)).provenance() for lang in config.task.languages}
    parent = mlflow_runs.start_parent_run(
        client, config.tracking.experiment_name, config.name, config.model_dump(mode="json"), dry_run_text(config),
        provenance, resume=resume, artifact_location=mlflow_runs.artifact_location(tracking_uri, config.storage_path),
    )
    summary = SweepSummary(config.name, config.search.metric, tracking_uri, config.tracking.experiment_name, parent)
    try:
        if config.model.stage1 == "auto":
            config = _with_stage1(client, parent, config)
        elif config.model.stage1 is None and config.model.tiny_architecture is None:
            log.warning("model.stage1 is null: %s is adapted without the paper's English stage 1 "
                        "(model.stage1: auto trains it)", config.model.name_or_path)
        for language in config.task.languages:
            grid = _search(config, language, tracking_uri, parent, resume)
            result = select_best(grid, config.search.metric, config.search.mode, language)
            result.run_id = mlflow_runs.child_run(client, parent, result.trial_id)
            if result.run_id and not result.test:
                result.test = _score_stopped_trial(client, config, result)
            if result.run_id:
                result.registered = mlflow_runs.log_best(client, parent, config, result)
            summary.languages.append(result)
        mlflow_runs.end_sweep(client, parent, "FINISHED", summary.average())
    except SweepInterrupted:
        mlflow_runs.end_sweep(client, parent, "KILLED")
        raise
    except BaseException:
        mlflow_runs.end_sweep(client, parent, "FAILED")
        raise
    return summary


def _with_stage1(client, parent: str, config: ExperimentConfig) -> ExperimentConfig:
    """Train (or reuse) the stage-1 adapter, log it on the parent run, and point the trials at it."""
    from flare_ray.training.stage1 import ensure_stage1

    folder, info = ensure_stage1(config)
    scores = ", ".join(f"{k} {v:.2f}" for k, v in info["english_validation"].items())
    print(f"stage 1: {'reused' if info['reused'] else 'trained'} {folder} "
          f"(best epoch {info['best_epoch']}, English validation: {scores})")
    mlflow_runs.log_stage1(client, parent, info)
    return config.model_copy(update={"model": config.model.model_copy(update={"stage1": folder})})


def _search(config: ExperimentConfig, language: str, tracking_uri: str, parent: str, resume: bool):
    search = config.search
    name = f"{config.name}-{language}"
    trainable = ray.tune.with_parameters(run_trial, experiment=config, language=language)  # the validated object
    trainable = ray.tune.with_resources(trainable, {"CPU": 0.01})  # the driver only waits on its Train run
    path = join(config.storage_path, name)
    if resume and ray.tune.Tuner.can_restore(path):
        log.info("resuming %s from %s", name, path)
        tuner = ray.tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        return _finished(tuner.fit(), search.num_samples, name)
    searcher = OptunaSearch(
        space=DefineByRun(config), sampler=build_sampler(search.sampler), metric=search.metric, mode=search.mode
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
            storage_path=config.storage_path,
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


def _score_stopped_trial(client, config: ExperimentConfig, result: LanguageResult) -> dict[str, float]:
    """ASHA stopped the best trial before its own test scoring: score its best adapter now, as a Ray task."""
    checkpoint = client.get_run(result.run_id).data.tags.get(mlflow_runs.CHECKPOINT_TAG)
    if not checkpoint:
        log.warning("best trial %s of %s has no checkpoint to score on the test split", result.trial_id, result.language)
        return {}
    gpus = config.scaling.resources_per_worker()["GPU"]
    scores = ray.get(ray.remote(num_gpus=min(gpus, 1.0))(score_checkpoint).remote(checkpoint, config.storage_path))
    mlflow_runs.log_scores(client, result.run_id, scores)
    return scores

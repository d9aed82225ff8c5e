"""The sweep: every search of every target language at once, then selection, registry and the summary.

The searches (:mod:`~flare_ray.search.searches`: one per language, or per language and grid cell) are
``Tuner`` runs of :func:`~flare_ray.search.trial.run_trial`, started together in threads of this
driver (:mod:`~flare_ray.search.concurrent`) so that all languages share the cluster. Each has its own
searcher (Optuna TPE, define-by-run, behind ``Repeater`` for seeds and a ``ConcurrencyLimiter``) or
Ray Tune's grid, optional ASHA, trial-level ``FailureConfig`` and the MLflow callback. ``--resume``
restores every interrupted search of the same name (with its searcher's state), once every file of that state
is found to be as this sweep wrote and signed it, and the search planned as it was
(:mod:`~flare_ray.search.resume`; else :class:`ResumeRefused`, before anything starts). Afterwards the best
configuration per language (the mean over its seeds of the MT-validation metric,
:func:`~flare_ray.search.summary.select_best`) is tagged on the parent run and its best seed's adapter
registered in the MLflow model registry. Where the trials' time went (the sums of their ``time/*`` figures, the idle
time of the slots, the goodput: :mod:`~flare_ray.search.progress`) is logged on the parent run too.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from functools import partial
from pathlib import Path

import ray.tune

from flare_ray.experiment import SCHEMA_VERSION, ExperimentConfig
from flare_ray.secrets import has_password, keep_out_of_runtime_envs
from flare_ray.storage import local_folder
from flare_ray.tasks import get_task
from flare_ray.tracking import mlflow_runs
from flare_ray.tracking.callback import MLflowTrialCallback

from .concurrent import SearchControl, SearchesSaved, run_concurrently, set_checkpoint_period
from .console import Console
from .console import describe as label_trial
from .estimate import Estimate, versus
from .plan import dry_run_text
from .progress import search_plan as progress_plan
from .progress import time_account
from .resume import (
    PLAN,
    TUNER_PKL,
    Folder,
    ResumeRefused,  # noqa: F401 - raised by check_resume; the CLI's exit status 2
    check_resume,
    has_saved_state,
    search_plan,
    sign_stored,
    write_plan,
)
from .searches import Search, concurrency, describe_trial, plan_searches, search_path, tune_config
from .seeding import SeedCheckpoints, adaptive_searcher, ended_early, log_decisions
from .summary import LanguageResult, NoTrialReported, SweepSummary, select_best, trial_rows
from .trial import DRIVER_RESOURCE, drivers_on_head, run_trial, score_checkpoint, trial_log, trial_resources

log = logging.getLogger(__name__)


class SweepInterrupted(RuntimeError):
    """The sweep stopped before all its trials ended (Ctrl-C, a lost driver); ``--resume`` continues it."""


class SweepFailed(RuntimeError):
    """The sweep as a whole failed (e.g. every trial of a language failed): nothing to select."""


def run_sweep(
    config: ExperimentConfig,
    resume: bool = False,
    console: Console | None = None,
    resources: dict[str, float] | None = None,
    estimate: Estimate | None = None,
) -> SweepSummary:
    """``resources``: what the cluster holds at most (an autoscaling cluster's, as it may grow), which sets how
    many trials run at once; None: its current resources. ``estimate``: what the sweep was estimated to cost,
    logged on the parent run beside the actual (``estimate/*``) once the trials end."""
    keep_out_of_runtime_envs()  # the trials inherit the AWS credentials; Ray would log them
    console = console or Console()
    folder = local_folder(config.storage_path)
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)
    stage1 = config.model.model_dump(mode="json")["stage1"]  # as written: "auto" becomes a folder below
    if resume:  # before the parent run is touched: a refused resume leaves the sweep's runs as they are
        _check_resume(config, console, stage1)
    tracking_uri = mlflow_runs.resolve_tracking_uri(config)
    if has_password(tracking_uri):  # MLflow prints a link to each run it ends: the URI, credentials and all
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
    client = mlflow_runs.connect(tracking_uri)
    provenance = {lang: get_task(config.task.task_config(lang)).provenance() for lang in config.task.languages}
    parent = mlflow_runs.start_parent_run(
        client,
        config.tracking.experiment_name,
        config.name,
        config.model_dump(mode="json"),
        dry_run_text(config),
        provenance,
        resume=resume,
        artifact_location=mlflow_runs.artifact_location(tracking_uri, config.storage_path),
        tags={mlflow_runs.SCHEMA_TAG: str(SCHEMA_VERSION)},
    )
    summary = SweepSummary(
        config.name,
        config.search.metric,
        tracking_uri,
        config.tracking.experiment_name,
        parent,
        runs_url=mlflow_runs.sweep_runs_url(client, tracking_uri, parent),
    )
    if drivers_on_head() and config.scaling.in_trial_process:
        console.print(
            f"trial drivers: on the node offering '{DRIVER_RESOURCE}' (the head), each trial's worker a Ray "
            "Train worker on a node that holds it"
        )
        config = config.model_copy(update={"scaling": config.scaling.model_copy(update={"ray_train": True})})
    before: dict[str, float] = {}  # what the sweep did before its trials, seconds
    try:
        started = time.perf_counter()
        _with_translations(client, parent, config, console)  # stage 1 reads the English side of the mt splits
        if time.perf_counter() - started >= 1.0:  # (nothing to translate: no line)
            before["translation"] = time.perf_counter() - started
        if config.model.stage1 == "auto":
            started = time.perf_counter()
            config = _with_stage1(client, parent, config, console)
            before["stage 1"] = time.perf_counter() - started
        elif config.model.stage1 is None and config.model.tiny_architecture is None:
            log.warning(
                "model.stage1 is null: %s is adapted without the paper's English stage 1 "
                "(model.stage1: auto trains it)",
                config.model.name_or_path,
            )
        try:  # with a grid and a space, a validation per cell: seconds for thousands of cells
            searches = {s.name: s for s in plan_searches(config)}
        except KeyboardInterrupt:
            raise SweepInterrupted(
                "the sweep was interrupted while it planned its searches, before any started: run the same "
                "command with --resume to continue"
            ) from None
        if folder is not None:  # Ctrl-C waits for one save of each search's state
            set_checkpoint_period(max(s.expected_trials for s in searches.values()))
        resources = resources or ray.cluster_resources()
        slots = {name: concurrency(search, resources, len(searches)) for name, search in searches.items()}
        plans = {name: progress_plan(search, slots[name]) for name, search in searches.items()}
        console.plan(plans)
        started = time.perf_counter()
        try:
            grids = run_concurrently(
                list(searches),
                lambda name: _fit(searches[name], tracking_uri, parent, resume, slots[name], console, stage1),
            )
        except SearchesSaved:
            raise SweepInterrupted(
                "the sweep was interrupted; the state of every search is saved: run the same "
                "command with --resume to continue"
            ) from None
        except KeyboardInterrupt:  # Ctrl-C twice: stopped without waiting for the searches to save their state
            raise SweepInterrupted(
                "the sweep was stopped at once (Ctrl-C twice); each search continues from the last state it "
                "saved: run the same command with --resume to continue"
            ) from None
        summary.trials = sum(len(grid) for grid in grids.values() if grid is not None)
        summary.failed = sum(grid.num_errors for grid in grids.values() if grid is not None)
        summary.timing = time_account(  # where the trials' time went, and the slots'
            (result.metrics for grid in grids.values() if grid is not None for result in grid),
            sum(plan.slots for plan in plans.values()),
            time.perf_counter() - started,
            before,
        )
        mlflow_runs.log_scores(client, parent, summary.timing.metrics())
        if estimate is not None:  # beside the actual: what it estimates (the trials, stage 1), and all in all
            actual = summary.timing.wall + before.get("stage 1", 0.0)
            total = {
                "estimate/actual_seconds": actual,
                "sweep/total_wall_seconds": summary.timing.wall + sum(before.values()),
            }
            mlflow_runs.log_scores(client, parent, {**estimate.metrics(), **total})
            if estimate.timed:
                extra = (
                    f" (and translation {before['translation']:.0f} s, not estimated)"
                    if "translation" in before
                    else ""
                )
                console.print(versus(estimate.wall(), actual) + extra)
        for search in searches.values():  # adaptive seeds: each round's decisions, beside the sweep's report
            log_decisions(client, parent, search)
        for language in config.task.languages:
            mine = [s for s in searches.values() if s.language == language]
            rows = [row for s in mine for row in trial_rows(grids[s.name], s, config.search.metric, config.search.mode)]
            try:
                result = select_best(rows, config.search.metric, config.search.mode, language)
            except NoTrialReported as err:
                raise SweepFailed(f"{err}; {summary.failed} of {summary.trials} trials of the sweep failed") from None
            result.run_id = mlflow_runs.child_run(client, parent, result.trial_id)
            if result.run_id and not result.test:
                console.print(
                    f"{language}: scoring the selected trial {result.trial_id} on the test split (ASHA stopped "
                    "it before its own test scoring)"
                )
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


def _check_resume(config: ExperimentConfig, console: Console, stage1) -> None:
    """Raise :class:`ResumeRefused` where a search's saved state is not as this sweep signed it, or its plan
    changed; say so where nothing was saved."""
    try:
        searches = plan_searches(config)
    except KeyboardInterrupt:
        raise SweepInterrupted(
            "the sweep was interrupted while it planned its searches, before any started: run the same "
            "command with --resume to continue"
        ) from None
    check_resume(searches, config.storage_path, console.print, stage1)


def _with_translations(client, parent: str, config: ExperimentConfig, console: Console) -> None:
    """Make (or reuse) the machine-translated splits the trials read, and log what was made on the parent run."""
    from .translation import ensure_translations

    stage = ensure_translations(config)
    if stage is None:
        return
    console.print(f"{stage.line()} in {stage.seconds:.0f} s, under {config.task.mt_dir}")
    client.set_tag(parent, "translation.model", stage.model)
    client.log_metric(parent, "translation.cached", stage.cached)
    client.log_metric(parent, "translation.made", stage.made)
    client.log_dict(
        parent,
        {
            "model": stage.model,
            "mt_dir": str(config.task.mt_dir),
            "roles": stage.roles,
            "seconds": stage.seconds,
            "splits": stage.splits,
        },
        "translation/translation.json",
    )


def _with_stage1(client, parent: str, config: ExperimentConfig, console: Console) -> ExperimentConfig:
    """Train (or reuse) the stage-1 adapter, log it on the parent run, and point the trials at it."""
    from flare_ray.training.stage1 import ensure_stage1

    from .stage1 import train_stage1

    folder, info = ensure_stage1(config, partial(train_stage1, console=console))
    scores = ", ".join(f"{k} {v:.2f}" for k, v in info["english_validation"].items())
    print(
        f"stage 1: {'reused' if info['reused'] else 'trained'} {folder} "
        f"(best epoch {info['best_epoch']}, English validation: {scores})"
    )
    mlflow_runs.log_stage1(client, parent, info)
    return config.model_copy(update={"model": config.model.model_copy(update={"stage1": folder})})


def _fit(
    search: Search,
    tracking_uri: str,
    parent: str,
    resume: bool,
    max_concurrent: int | None,
    console: Console,
    stage1=None,
):
    """Run (or resume) one search to its end; its ``ResultGrid``. A new search records what it is and signs
    ``tuner.pkl`` before Tune saves anything; Tune's saves are signed as they are made (``SearchControl``)."""
    config, spec = search.config, search.config.search
    trainable = ray.tune.with_parameters(
        run_trial, experiment=config, language=search.language, seeds=spec.seed_list, search=search.name
    )
    trainable = ray.tune.with_resources(trainable, trial_resources(config.scaling, spec.worker_max_failures))
    path = search_path(search)
    shown = console.callback(
        search.name,
        search.language,
        partial(label_trial, search),
        spec.metric,
        config.training.epochs,
        lambda trial: str(trial_log(config.storage_path, search.name, str(trial))),
    )
    folder = Folder.at(path)
    if resume and has_saved_state(folder):  # checked by check_resume before the sweep started
        log.info("resuming %s from %s", search.name, path)
        tuner = ray.tune.Tuner.restore(path, trainable, resume_unfinished=True, resume_errored=True)
        return _finished(tuner.fit(), search)
    describe = partial(
        describe_trial,
        base=config.model_dump(mode="json"),
        cell=search.cell,
        grid=spec.cell_keys,
        seeds=spec.seed_list,
        ablation=search.ablation,
    )
    callback = MLflowTrialCallback(
        tracking_uri,
        parent,
        search.language,
        spec.metric,
        spec.mode,
        config.storage_path,
        describe,
        search=search.name,
        label=partial(label_trial, search),
    )
    tune, param_space = tune_config(search, max_concurrent)
    adaptive = adaptive_searcher(tune.search_alg)  # adaptive seeds: it reads each finished trial's checkpoint
    write_plan(folder, search_plan(search, stage1))
    tuner = ray.tune.Tuner(
        trainable,
        param_space=param_space,
        tune_config=tune,
        run_config=ray.tune.RunConfig(
            name=search.name,
            storage_path=config.storage_path,
            failure_config=ray.tune.FailureConfig(max_failures=spec.max_failures),
            # every epoch checkpoints (the latest holds the best adapter); the one before is where a restart
            # falls back when the latest is damaged (flare_ray.training.checkpoints)
            checkpoint_config=ray.tune.CheckpointConfig(num_to_keep=2),
            callbacks=[
                SearchControl(search.name, signs=True),
                callback,
                shown,
                *([SeedCheckpoints(adaptive)] if adaptive else []),
            ],
            verbose=0,
        ),
    )  # has written tuner.pkl
    sign_stored(folder, search.name, [PLAN, TUNER_PKL])
    return _finished(tuner.fit(), search)


def _finished(grid, search: Search):
    """Tune returns normally when its loop ends early: tell that apart from a finished search."""
    if grid.num_terminated + grid.num_errors < search.expected_trials and not ended_early(search):
        raise SweepInterrupted(
            f"search {search.name} stopped after {grid.num_terminated + grid.num_errors} of {search.expected_trials} "
            "trials; its state is saved: run the same command with --resume to continue"
        )
    return grid


def _score_stopped_trial(client, config: ExperimentConfig, result: LanguageResult) -> dict[str, float]:
    """ASHA stopped the best trial before its own test scoring: score its best adapter now, as a Ray task."""
    checkpoint = client.get_run(result.run_id).data.tags.get(mlflow_runs.CHECKPOINT_TAG)
    if not checkpoint:
        log.warning(
            "best trial %s of %s has no checkpoint to score on the test split", result.trial_id, result.language
        )
        return {}
    gpus = config.scaling.resources_per_worker()["GPU"]
    scores, frame = ray.get(
        ray.remote(num_gpus=min(gpus, 1.0))(score_checkpoint).remote(checkpoint, config.storage_path)
    )
    mlflow_runs.log_scores(client, result.run_id, scores)
    with tempfile.TemporaryDirectory() as tmp:
        frame.to_parquet(Path(tmp) / "test.parquet", index=False)
        client.log_artifact(result.run_id, str(Path(tmp) / "test.parquet"), mlflow_runs.PREDICTIONS_PATH)
    return scores

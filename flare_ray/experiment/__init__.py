"""Experiment configuration of ``python -m flare_ray.tune search_spaces/<name>.yaml``.

Typed, validated YAML (:class:`ExperimentConfig`), the search space
(:mod:`~flare_ray.experiment.distributions`), Optuna define-by-run sampling for
Ray Tune (:class:`DefineByRun`) and the dry-run report. Imports neither Ray
nor MLflow.

    config = load_experiment("search_spaces/rank.yaml", ["training.epochs=3"])
    search = OptunaSearch(space=make_define_by_run(config), sampler=build_sampler(config.search.sampler),
                          metric=config.search.metric, mode=config.search.mode)
    # in the trial: trial_config = apply_sample(config, tune_config)
"""

from .config import (
    TINY_ARCHITECTURES,
    ExperimentConfig,
    FlareSpec,
    LoraSpec,
    MethodSpec,
    ModelSpec,
    SamplerSpec,
    ScalingSpec,
    SchedulerSpec,
    SearchSpec,
    TaskSpec,
    TrackingSpec,
    TrainingSpec,
    reported_metrics,
    resolve_tracking_uri,
)
from .distributions import Categorical, Distribution, FloatRange, IntRange, LogUniform
from .dry_run import dry_run_text, space_lines
from .errors import ExperimentConfigError, Problem
from .loading import load_experiment, parse_override, validate_experiment
from .space import DefineByRun, apply_sample, build_sampler, make_define_by_run, search_space_problems

__all__ = [
    "TINY_ARCHITECTURES",
    "Categorical",
    "DefineByRun",
    "Distribution",
    "ExperimentConfig",
    "ExperimentConfigError",
    "FlareSpec",
    "FloatRange",
    "IntRange",
    "LogUniform",
    "LoraSpec",
    "MethodSpec",
    "ModelSpec",
    "Problem",
    "SamplerSpec",
    "ScalingSpec",
    "SchedulerSpec",
    "SearchSpec",
    "TaskSpec",
    "TrackingSpec",
    "TrainingSpec",
    "apply_sample",
    "build_sampler",
    "dry_run_text",
    "load_experiment",
    "make_define_by_run",
    "parse_override",
    "reported_metrics",
    "resolve_tracking_uri",
    "search_space_problems",
    "space_lines",
    "validate_experiment",
]

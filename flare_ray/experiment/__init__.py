"""The experiment YAML of ``python -m flare_ray.tune``: the schema, loading it, and its search space.

    config = load_experiment("search_spaces/rank.yaml", ["training.epochs=3"])
    searcher = OptunaSearch(space=DefineByRun(config), sampler=build_sampler(config.search.sampler), ...)
    trial_config = apply_sample(config, sample)  # in the trial: one validation

Imports neither Ray nor MLflow, nor torch, transformers, peft or datasets: a config is checked (the schema,
the search space, and what it names on disk: :mod:`.checks`) in well under a second, as ``--dry-run`` does.
"""

from .config import SCHEMA_VERSION, ExperimentConfig
from .errors import ExperimentConfigError
from .loading import load_experiment, parse_override, validate_experiment
from .space import DefineByRun, apply_sample, build_sampler

__all__ = [
    "SCHEMA_VERSION",
    "DefineByRun",
    "ExperimentConfig",
    "ExperimentConfigError",
    "apply_sample",
    "build_sampler",
    "load_experiment",
    "parse_override",
    "validate_experiment",
]

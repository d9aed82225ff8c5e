"""The experiment config's error: every problem with its file, line and key path (:mod:`flare_ray.configfile`)."""

from __future__ import annotations

from pydantic import ValidationError

from flare_ray.configfile import ConfigFileError, KeyPath, Problem
from flare_ray.configfile import problems_of as _problems_of

from .config import ExperimentConfig


class ExperimentConfigError(ConfigFileError):
    """The experiment configuration is invalid; ``str()`` is the readable report."""

    what = "experiment config"


def problems_of(err: ValidationError, prefix: KeyPath = ()) -> list[Problem]:
    """Readable problems from pydantic's errors of :class:`ExperimentConfig`."""
    return _problems_of(err, ExperimentConfig, prefix)

"""The experiment config's error: every problem with its file, line and key path (:mod:`flare_ray.configfile`)."""

from __future__ import annotations

from pydantic import ValidationError

from flare_ray.configfile import ConfigFileError, KeyPath, Problem
from flare_ray.configfile import problems_of as _problems_of

from .config import SEEDS_TAGS, ExperimentConfig
from .distributions import TAGS


class ExperimentConfigError(ConfigFileError):
    """The experiment configuration is invalid; ``str()`` is the readable report."""

    what = "experiment config"


def problems_of(err: ValidationError, prefix: KeyPath = ()) -> list[Problem]:
    """Readable problems from pydantic's errors of :class:`ExperimentConfig`, without the distribution's
    type tag that pydantic puts in a location (``search.space.<key>.categorical.values``)."""
    problems = _problems_of(err, ExperimentConfig, prefix)
    for p in problems:
        if p.path[:2] == ("search", "space") and len(p.path) > 3 and p.path[3] in TAGS:
            p.path = p.path[:3] + p.path[4:]
        elif p.path[:2] == ("search", "seeds") and len(p.path) > 2 and p.path[2] in SEEDS_TAGS:
            p.path = p.path[:2] + p.path[3:]  # which form of search.seeds (a list, or {min, max})
    return problems

"""Selection with seeds, the rule the sweep (:mod:`flare_ray.search.summary`) and the report
(:mod:`flare_ray.report.table`) share: trials that differ only in ``training.seed`` are one configuration,
and the best configuration has the best mean over its seeds of the MT-validation metric (each trial's best
epoch), ties broken by the lower standard deviation, then by the order the configurations ran.

A pure function of a table of trials (pandas only), below both of its users."""

from __future__ import annotations

import pandas as pd


def best_configuration(frame: pd.DataFrame, mode: str) -> tuple[str, pd.DataFrame]:
    """The ``configuration`` of ``frame`` (one row per trial: ``configuration``, ``validation``) with the best
    mean ``validation`` over its seeds (``mode``: ``max`` or ``min``), ties broken by the lower std, then by
    the order they ran; and the ``mean`` and ``std`` of every configuration."""
    stats = frame.groupby("configuration", sort=False)["validation"].agg(["mean", "std"]).fillna({"std": 0.0})
    stats["rank"] = -stats["mean"] if mode == "max" else stats["mean"]
    return stats.sort_values(["rank", "std"], kind="stable").index[0], stats

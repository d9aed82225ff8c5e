"""The paper's table: rows = methods or grid cells, columns = languages and their average.

* A **row** is a grid cell (with its method): it is named by the keys that vary between rows, e.g.
  ``flare_mt, r=8``. Within a row and language, the configuration selected the way the sweep selects
  (:func:`~flare_ray.selection.best_configuration`: the best mean MT-validation score over seeds)
  gives the row its trials, one per seed; a sweep without a grid is one row.
* A **cell** is the mean ± std over those seeds of the gold-test metric of the task (the paper's: accuracy
  for XNLI, exact match for TyDiQA, macro F1 for NusaX), with n, the number of seeds scored on test; the
  best per column is marked, and each other row carries the p-value of the best row against it
  (:mod:`~flare_ray.report.significance`).
* The **average** of a row is over its languages, per seed (seeds scored on every language), then mean ± std.
* The **paper's cell**, where a published one matches (:mod:`~flare_ray.report.paper`): its table, mean, std
  and the difference, yours - paper's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from flare_ray.selection import best_configuration
from flare_ray.tasks import TASKS

from .paper import AVERAGE, paper_cells, row_keys_of
from .records import ReportError, SweepRecords
from .significance import LEVEL, paired_bootstrap


@dataclass
class Column:
    name: str  # the language, or task/language when several tasks are joined
    sweep: SweepRecords
    language: str

    @property
    def deviations(self) -> list[str]:
        return self.sweep.deviations(self.language)


def row_keys(trials: pd.DataFrame) -> pd.Series:
    """Each trial's row: its grid cell and method, as a dict."""
    return pd.Series(
        [{**json.loads(cell), "method.kind": method} for cell, method in zip(trials["cell"], trials["method"])],
        index=trials.index,
        dtype=object,
    )


def row_names(keys: Sequence[dict[str, Any]]) -> list[str]:
    """Rows named by the keys that vary between them (``r=8`` for ``method.lora.r``; a key a row's cell does not
    have is left out of its name); the method alone if nothing else varies."""
    varying = [k for k in dict.fromkeys(k for d in keys for k in d) if len({json.dumps(d.get(k)) for d in keys}) > 1]
    if not varying:
        return [str(d.get("method.kind")) for d in keys]
    short = lambda key: "" if key == "method.kind" else key.rsplit(".", 1)[-1] + "="  # noqa: E731
    return [", ".join(f"{short(k)}{d[k]}" for k in varying if k in d) for d in keys]  # a LoRA row has no fusion


def cells(sweeps: Sequence[SweepRecords], resamples: int, seed: int) -> tuple[pd.DataFrame, list[Column]]:
    """One line per (row, column): the selected configuration's seeds, their test and validation scores,
    mean, std, n, whether it is the column's best, and its p-value against the best."""
    tasks = {s.task for s in sweeps}
    columns, frames = [], []
    for sweep in sweeps:
        trials = sweep.trials[sweep.trials["validation"].notna()].copy()
        if trials.empty:
            raise ReportError(
                f"sweep {sweep.name!r} (parent run {sweep.parent_run_id}) has no trial with {sweep.metric}"
            )
        trials["sweep"], trials["row_key"] = sweep.name, row_keys(trials)
        frames.append(trials)
        for language in sweep.languages:
            columns.append(Column(language if len(tasks) == 1 else f"{sweep.task}/{language}", sweep, language))
    trials = pd.concat(frames, ignore_index=True)
    keys = [json.loads(k) for k in dict.fromkeys(json.dumps(d, sort_keys=True) for d in trials["row_key"])]
    names = dict(zip((json.dumps(k, sort_keys=True) for k in keys), row_names(keys)))
    trials["row"] = [names[json.dumps(d, sort_keys=True)] for d in trials["row_key"]]
    if len(sweeps) > 1 and trials.groupby(["row", "language"])["sweep"].nunique().max() > 1:  # same rows, same task
        trials["row"] = trials["sweep"] + ": " + trials["row"]

    lines = []
    for column in columns:
        sweep, test = column.sweep, f"test/{column.sweep.test_metric}"
        mine = trials[(trials["sweep"] == sweep.name) & (trials["language"] == column.language)]
        for row, group in mine.groupby("row", sort=False):
            chosen, _ = best_configuration(group, sweep.mode)
            picked = group[group["configuration"] == chosen]
            scored = picked[picked[test].notna()] if test in picked else picked.iloc[:0]
            lines.append(
                {
                    "row": row,
                    "column": column.name,
                    "task": sweep.task,
                    "language": column.language,
                    "sweep": sweep.name,
                    "metric": test,
                    "mean": scored[test].mean() if len(scored) else math.nan,
                    "std": scored[test].std() if len(scored) > 1 else math.nan,
                    "n": len(scored),
                    "trials": len(picked),
                    "seeds": json.dumps([None if pd.isna(s) else int(s) for s in scored["seed"]]),
                    "validation_mean": picked["validation"].mean(),
                    "validation_std": picked["validation"].std(),
                    "configuration": chosen,
                    "run_ids": json.dumps(list(scored["run_id"])),
                    "paper_setting": not column.deviations,
                }
            )
    table = pd.DataFrame(lines)
    order = list(dict.fromkeys(trials["row"]))
    table["row"] = pd.Categorical(table["row"], categories=order, ordered=True)
    table = table.sort_values(["row"], kind="stable").reset_index(drop=True)
    table["row"] = table["row"].astype(str)
    _mark_best_and_test(table, columns, resamples, seed)
    table = pd.concat([table, _averages(table, trials, columns)], ignore_index=True)
    return paper_cells(table, columns, row_keys_of(trials)), columns


def _mark_best_and_test(table: pd.DataFrame, columns: list[Column], resamples: int, seed: int) -> None:
    """The best row per column (the highest mean test score) and every other row's p-value against it."""
    table["best"], table["p_value"] = False, math.nan
    for column in columns:
        here = table[(table["column"] == column.name) & table["mean"].notna()]
        if here.empty:
            continue
        top = here["mean"].max()
        table.loc[here.index[here["mean"] == top], "best"] = True
        best = here.loc[here["mean"].idxmax()]
        ours = _predictions(column.sweep, best)
        metric, labels = column.sweep.test_metric, TASKS[column.sweep.task].labels
        for index, other in here.drop(best.name).iterrows():
            theirs = _predictions(column.sweep, other)
            if ours and theirs:
                table.loc[index, "p_value"] = paired_bootstrap(ours, theirs, metric, labels, resamples, seed)
    table["significant"] = table["p_value"] < LEVEL


def _predictions(sweep: SweepRecords, line) -> list[pd.DataFrame] | None:
    frames = [sweep.predictions(run_id) for run_id in json.loads(line["run_ids"])]
    return None if not frames or any(f is None for f in frames) else frames


def _averages(table: pd.DataFrame, trials: pd.DataFrame, columns: list[Column]) -> pd.DataFrame:
    """Per row: the mean over its languages for each seed scored on all of them, then mean ± std over seeds."""
    if len(columns) < 2:
        return pd.DataFrame()
    lines = []
    for row, group in table.groupby("row", sort=False):
        if len(group) < len(columns) or group["mean"].isna().any():
            lines.append({"row": row, "column": AVERAGE, "mean": math.nan, "n": 0})
            continue
        per_seed: dict[Any, list[float]] = {}
        for line in group.itertuples():
            scored = trials[trials["run_id"].isin(json.loads(line.run_ids))]
            for s, value in zip(scored["seed"], scored[line.metric]):
                per_seed.setdefault(s, []).append(value)
        complete = pd.Series({s: sum(v) / len(v) for s, v in per_seed.items() if len(v) == len(columns)}, dtype=float)
        lines.append(
            {
                "row": row,
                "column": AVERAGE,
                "mean": group["mean"].mean(),
                "n": len(complete),
                "std": complete.std() if len(complete) > 1 else math.nan,
                "paper_setting": bool(group["paper_setting"].all()),
            }
        )
    out = pd.DataFrame(lines)
    out["best"] = out["mean"].notna() & (out["mean"] == out["mean"].max())
    return out

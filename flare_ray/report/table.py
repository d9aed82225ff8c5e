"""The paper's table: rows = methods or grid cells, columns = languages and their average.

* A **row** is a grid cell (with its method): it is named by the keys that vary between rows, e.g.
  ``flare_mt, r=8``. Within a row and language, the configuration selected the way the sweep selects
  (:func:`~flare_ray.selection.best_configuration`: the best mean MT-validation score over seeds)
  gives the row its trials, one per seed; a sweep without a grid is one row.
* A **cell** is the mean ± std over those seeds of the gold-test metric of the task (the paper's: accuracy
  for XNLI, exact match for TyDiQA, macro F1 for NusaX), with n, the number of seeds scored on test; the
  best per column is marked, and each other row carries the p-value of the best row against it
  (:mod:`~flare_ray.significance`), Holm-corrected over the column's comparisons; with a **baseline**
  row, every other row also carries its difference to it (Δ), the Δ's paired-bootstrap 95 % interval and its
  Holm-corrected p-value. A cell also keeps its seeds' scores and the selected configuration's
  hyperparameters (:func:`hyperparameters`).
* The **average** of a row is over its languages, per seed (seeds scored on every language), then mean ± std.
  Its p-value against the average's best row and its Δ against the baseline row come from a stratified paired
  bootstrap (:func:`~flare_ray.significance.stratified_differences`: each resample draws every language's
  examples within that language), Holm-corrected over the average column's comparisons like any column. It is
  not the paper's setting where a language is not, or where its languages' settings differ
  (:func:`average_deviations`).
* The **paper's cell**, where a published one matches (:mod:`~flare_ray.report.paper`): its table, mean, std
  and the difference, yours - paper's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

from flare_ray.experiment.config import BASELINE_ARM, arm_name
from flare_ray.selection import best_configuration
from flare_ray.significance import (
    LEVEL,
    Stratum,
    difference,
    holm,
    paired_bootstrap,
    stratified_difference,
    stratified_paired_bootstrap,
)
from flare_ray.tasks import TASKS

from .paper import AVERAGE, paper_cells, row_keys_of
from .records import ReportError, SweepRecords

# Shown for every row beside the keys its selection chose: the recipe's learning rate and LoRA rank
RECIPE_KEYS = ("training.learning_rate", "method.lora.r")


@dataclass
class Column:
    name: str  # the language, or task/language when several tasks are joined
    sweep: SweepRecords
    language: str

    @property
    def deviations(self) -> list[str]:
        return self.sweep.deviations(self.language)


def row_keys(trials: pd.DataFrame, ablated: Sequence[str] = ()) -> pd.Series:
    """Each trial's row: its grid cell and method, as a dict; a trial of an ablation's arm (its ``arm``): the
    arm as the table names it (``baseline``, ``fusion=add``), with the cell's keys the ablation does not set
    (``ablated``: those it does) and its method unless the ablation sets it."""
    arms = trials["arm"] if "arm" in trials else [None] * len(trials)
    return pd.Series(
        [
            _row_key(json.loads(cell), method, arm, ablated)
            for cell, method, arm in zip(trials["cell"], trials["method"], arms)
        ],
        index=trials.index,
        dtype=object,
    )


def _row_key(cell: dict[str, Any], method: str, arm: Any, ablated: Sequence[str]) -> dict[str, Any]:
    if not isinstance(arm, str):
        return {**cell, "method.kind": method}
    key, _, value = arm.partition("=")
    kind = {} if "method.kind" in ablated else {"method.kind": method}
    return {
        "arm": f"{short(key)}={value}" if value else arm,
        **{k: v for k, v in cell.items() if k not in ablated},
        **kind,
    }


def _arms(sweep: SweepRecords) -> list[str]:
    """The names of a sweep's ablation arms (its ``flare_ray.arm`` tags), in the order the ablation lists them."""
    vary = (sweep.config["search"].get("ablation") or {}).get("vary") or {}
    return [BASELINE_ARM, *(arm_name(key, value) for key, values in vary.items() for value in values)]


def row_names(keys: Sequence[dict[str, Any]]) -> list[str]:
    """Rows named by the keys that vary between them (``r=8`` for ``method.lora.r``; a key a row's cell does not
    have is left out of its name; an ablation's arm by itself: ``baseline``, ``fusion=add``); the method (or the
    arm) alone if nothing else varies."""
    varying = [k for k in dict.fromkeys(k for d in keys for k in d) if len({json.dumps(d.get(k)) for d in keys}) > 1]
    if not varying:
        return [str(d.get("arm") or d.get("method.kind")) for d in keys]
    short = lambda key: "" if key in ("method.kind", "arm") else key.rsplit(".", 1)[-1] + "="  # noqa: E731
    return [", ".join(f"{short(k)}{d[k]}" for k in varying if k in d) for d in keys]  # a LoRA row has no fusion


def short(key: str) -> str:
    """``r`` for ``method.lora.r``: a key as a table names it."""
    return key.rsplit(".", 1)[-1]


def hyperparameters(row_key: dict[str, Any], configuration: dict[str, Any], params: dict[str, str] | None) -> str:
    """What a row's selected configuration chose that its name does not say: the searched keys' values and
    the recipe's :data:`RECIPE_KEYS` (from the trial's logged params), e.g. ``learning_rate=0.003, r=8``."""
    values = {k: v for k, v in configuration.items() if k not in row_key}
    for key in RECIPE_KEYS:
        if key not in row_key and key not in values and params and key in params:
            values[key] = params[key]
    return ", ".join(f"{short(k)}={_number(v)}" for k, v in values.items())


def _number(value: Any) -> str:
    """A logged param (a string) or a configuration's value, numbers as ``%g``: ``0.003``, ``8``."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return f"{value:g}" if isinstance(value, float) else str(value)


def named_trials(sweeps: Sequence[SweepRecords]) -> tuple[pd.DataFrame, list[Column]]:
    """The trials of ``sweeps`` that reported the selection metric, each with its ``sweep``, ``row_key`` and
    ``row`` (the table's row name); and the table's columns."""
    tasks = {s.task for s in sweeps}
    columns, frames = [], []
    for sweep in sweeps:
        trials = sweep.trials[sweep.trials["validation"].notna()].copy()
        if trials.empty:
            raise ReportError(
                f"sweep {sweep.name!r} (parent run {sweep.parent_run_id}) has no trial with {sweep.metric}"
            )
        ablation = sweep.config["search"].get("ablation") or {}
        ablated = [*(ablation.get("baseline") or {}), *(ablation.get("vary") or {})]
        trials["sweep"], trials["row_key"] = sweep.name, row_keys(trials, ablated)
        frames.append(trials)
        for language in sweep.languages:
            columns.append(Column(language if len(tasks) == 1 else f"{sweep.task}/{language}", sweep, language))
    trials = pd.concat(frames, ignore_index=True)
    keys = [json.loads(k) for k in dict.fromkeys(json.dumps(d, sort_keys=True) for d in trials["row_key"])]
    names = dict(zip((json.dumps(k, sort_keys=True) for k in keys), row_names(keys)))
    trials["row"] = [names[json.dumps(d, sort_keys=True)] for d in trials["row_key"]]
    if "arm" in trials:  # an ablation's rows in the order of its arms: the baseline first
        rank = {arm: i for i, arm in enumerate(dict.fromkeys(arm for sweep in sweeps for arm in _arms(sweep)))}
        trials = trials.sort_values("arm", key=lambda arms: arms.map(lambda a: rank.get(a, len(rank))), kind="stable")
        trials = trials.reset_index(drop=True)
    if len(sweeps) > 1 and trials.groupby(["row", "language"])["sweep"].nunique().max() > 1:  # same rows, same task
        trials["row"] = trials["sweep"] + ": " + trials["row"]
    return trials, columns


def cells(
    sweeps: Sequence[SweepRecords], resamples: int, seed: int, baseline: str | None = None
) -> tuple[pd.DataFrame, list[Column]]:
    """One line per (row, column): the selected configuration's seeds, their test and validation scores,
    mean, std, n, whether it is the column's best, and its p-value against the best; with ``baseline`` (a row's
    name, or its method), its difference to the baseline row of its column (:func:`_against_baseline`)."""
    trials, columns = named_trials(sweeps)
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
                    "scores": json.dumps([float(v) for v in scored[test]] if len(scored) else []),
                    "validation_mean": picked["validation"].mean(),
                    "validation_std": picked["validation"].std(),
                    "configuration": chosen,
                    "hyperparameters": hyperparameters(picked["row_key"].iloc[0], json.loads(chosen), _params(picked)),
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
    if baseline is not None:
        _against_baseline(table, columns, baseline, row_keys_of(trials), resamples, seed)
    averages = _averages(table, trials, columns)
    if not averages.empty:
        _test_averages(averages, table, columns, resamples, seed)
    table = pd.concat([table, averages], ignore_index=True)
    return paper_cells(table, columns, row_keys_of(trials)), columns


def _params(picked: pd.DataFrame) -> dict[str, str] | None:
    if "params" not in picked:
        return None
    params = picked["params"].iloc[0]
    return params if isinstance(params, dict) else None


def _mark_best_and_test(table: pd.DataFrame, columns: list[Column], resamples: int, seed: int) -> None:
    """The best row per column (the highest mean test score) and every other row's p-value against it, raw
    (``p_value``) and Holm-corrected over the column's comparisons (``p_holm``, which ``significant`` reads)."""
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
    table["p_holm"] = _holm_per_column(table, "p_value")
    table["significant"] = table["p_holm"] < LEVEL


def _holm_per_column(table: pd.DataFrame, p: str) -> pd.Series:
    out = pd.Series(math.nan, index=table.index)
    for _, here in table.groupby("column", sort=False):
        out[here.index] = holm(list(here[p]))
    return out


def baseline_rows(table: pd.DataFrame, baseline: str, row_keys: dict[str, dict]) -> dict[str, str]:
    """Column -> the name of its baseline row: the row named ``baseline`` (also after a sweep's ``name: ``
    prefix), or else the one row whose method is ``baseline``. A column with no such row has none; a name that
    matches no row of any column, or several rows of one column, is a :class:`ReportError`."""
    out = {}
    for column, here in table.groupby("column", sort=False):
        rows = list(here["row"])
        named = [r for r in rows if r == baseline or r.split(": ", 1)[-1] == baseline]
        found = named or [r for r in rows if (row_keys.get(r) or {}).get("method.kind") == baseline]
        if len(found) > 1:
            raise ReportError(
                f"baseline {baseline!r} matches {len(found)} rows of column {column}: {found}; name one of them"
            )
        if found:
            out[column] = found[0]
    if not out:
        rows = list(dict.fromkeys(table["row"]))
        raise ReportError(
            f"baseline {baseline!r} matches no row of the report; expected a row's name or method: {rows}"
        )
    return out


def cell_baselines(table: pd.DataFrame, baseline: str, row_keys: dict[str, dict]) -> list[str | None] | None:
    """In an ablation with a grid (``baseline`` its baseline arm, which is then a row per grid cell): each row's
    baseline, the row of the same column whose key is the row's with the baseline arm (``fusion=add, r=8`` ->
    ``baseline, r=8``); None where the rows are not such (one baseline row per column: :func:`baseline_rows`)."""
    if baseline != BASELINE_ARM:
        return None
    keys = [row_keys.get(r) or {} for r in table["row"]]
    if (
        not any("arm" in k for k in keys)
        or sum(k.get("arm") == BASELINE_ARM for k in dict(zip(table["row"], keys)).values()) < 2
    ):
        return None
    cell = lambda key: json.dumps({k: v for k, v in key.items() if k != "arm"}, sort_keys=True, default=str)  # noqa: E731
    bases = {
        (column, cell(key)): row
        for column, row, key in zip(table["column"], table["row"], keys)
        if key.get("arm") == BASELINE_ARM
    }
    return [bases.get((column, cell(key))) for column, key in zip(table["column"], keys)]


def _against_baseline(
    table: pd.DataFrame, columns: list[Column], baseline: str, row_keys: dict[str, dict], resamples: int, seed: int
) -> None:
    """Every row's difference to its baseline row: ``delta`` (row - baseline, on the examples both were scored
    on), its 95 % interval (``delta_low``, ``delta_high``), its two-sided p-value (``p_baseline``) and that
    p-value Holm-corrected over the column's rows (``p_baseline_holm``); ``baseline``: the row. The baseline row
    is the column's (:func:`baseline_rows`), or in an ablation with a grid, where the baseline arm is a row per
    grid cell, the baseline arm of the row's own cell (:func:`cell_baselines`)."""
    for name in ("delta", "delta_low", "delta_high", "p_baseline"):
        table[name] = math.nan
    per_cell = cell_baselines(table, baseline, row_keys)
    if per_cell is not None:
        table["baseline"] = per_cell
    else:
        found = baseline_rows(table, baseline, row_keys)
        table["baseline"] = [found.get(c) for c in table["column"]]
    for column in columns:
        here = table[(table["column"] == column.name) & table["mean"].notna() & table["baseline"].notna()]
        labels = TASKS[column.sweep.task].labels
        for base_row, rows in here.groupby("baseline", sort=False):
            base = here[here["row"] == base_row]
            theirs = _predictions(column.sweep, base.iloc[0]) if len(base) else None
            if not theirs:
                continue
            for index, line in rows.drop(base.index, errors="ignore").iterrows():
                ours = _predictions(column.sweep, line)
                if ours:
                    table.loc[index, ["delta", "delta_low", "delta_high", "p_baseline"]] = list(
                        difference(ours, theirs, column.sweep.test_metric, labels, resamples, seed)
                    )
    table["p_baseline_holm"] = _holm_per_column(table, "p_baseline")


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


def average_deviations(columns: Sequence[Column]) -> list[str]:
    """Why the average column is not the paper's setting (``[]``: it is, or there is no average): the deviations
    its languages share; or, where its languages' settings differ, each language's (``jav: the paper's``)."""
    each = {c.name: c.deviations for c in columns}  # two sweeps of one language: one column
    if len(each) < 2:
        return []
    if len({tuple(d) for d in each.values()}) == 1:
        return next(iter(each.values()))
    paper = "the paper's"
    return [f"{name}: {'; '.join(d) or paper}" for name, d in each.items()]


def settings_differ(columns: Sequence[Column]) -> bool:
    """Whether the languages the average is over are in different settings (data, splits, model)."""
    return len(columns) > 1 and len({tuple(c.deviations) for c in columns}) > 1


def _test_averages(
    averages: pd.DataFrame, table: pd.DataFrame, columns: list[Column], resamples: int, seed: int
) -> None:
    """The average column's significance, as :func:`_mark_best_and_test` and :func:`_against_baseline` give a
    language's, from the stratified paired bootstrap over the languages (each a
    :class:`~flare_ray.significance.Stratum`): ``p_value`` of its best row against every other row,
    ``p_holm``, ``significant``; with a baseline (the same row in every language), ``delta``, ``delta_low``,
    ``delta_high``, ``p_baseline`` and ``p_baseline_holm``. A row without every language's predictions has none."""
    frames: dict[str, list[list[pd.DataFrame]] | None] = {}
    for row, mean in zip(averages["row"], averages["mean"]):
        frames[row] = None if math.isnan(mean) else _row_predictions(table, row, columns)

    def strata(first: str, second: str) -> list[Stratum] | None:
        if frames.get(first) is None or frames.get(second) is None:
            return None
        return [
            Stratum(a, b, c.sweep.test_metric, TASKS[c.sweep.task].labels or ())
            for a, b, c in zip(frames[first], frames[second], columns)
        ]

    scored = averages[averages["mean"].notna()]
    averages["p_value"] = math.nan
    if len(scored):
        best = scored.loc[scored["mean"].idxmax(), "row"]
        for index, line in scored[scored["row"] != best].iterrows():
            if (pair := strata(best, line["row"])) is not None:
                averages.loc[index, "p_value"] = stratified_paired_bootstrap(pair, resamples, seed)
    averages["p_holm"] = holm(list(averages["p_value"]))
    averages["significant"] = averages["p_holm"] < LEVEL
    if "baseline" not in table:
        return
    # a row's baseline in the average: the one it has in every language (an ablation with a grid: its cell's)
    bases = table.groupby("row", sort=False)["baseline"].agg(
        lambda b: b.iloc[0] if b.notna().all() and b.nunique() == 1 else None
    )
    averages["baseline"] = [bases.get(row) for row in averages["row"]]
    for name in ("delta", "delta_low", "delta_high", "p_baseline"):
        averages[name] = math.nan
    for index, line in scored.iterrows():
        base = bases.get(line["row"])
        if base is not None and base != line["row"] and base in set(scored["row"]):
            if (pair := strata(line["row"], base)) is not None:
                averages.loc[index, ["delta", "delta_low", "delta_high", "p_baseline"]] = list(
                    stratified_difference(pair, resamples, seed)
                )
    averages["p_baseline_holm"] = holm(list(averages["p_baseline"]))


def _row_predictions(table: pd.DataFrame, row: str, columns: list[Column]) -> list[list[pd.DataFrame]] | None:
    """A row's seeds' test predictions in each language, in the order of ``columns``; None where a language has
    none."""
    out = []
    for column in columns:
        line = table[(table["row"] == row) & (table["column"] == column.name) & (table["sweep"] == column.sweep.name)]
        found = _predictions(column.sweep, line.iloc[0]) if len(line) else None
        if found is None:
            return None
        out.append(found)
    return out

"""The report's figures, as PNG files: bars with error bars, validation curves, and Optuna's plots.

* ``bars.png``: per column (language), one bar per row, the mean gold-test score with its std over seeds;
* ``curves.png``: per language, the MT-validation curve of each row's selected configuration (the mean over
  its seeds per epoch);
* ``optuna-<sweep>-<language>-{parallel,importance}.png``: for a sweep with a ``search.space``, Optuna's
  parallel-coordinate and parameter-importance plots (its matplotlib backend) of the searched keys, from a
  study rebuilt from the trials' MLflow records.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no screen
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from .records import SweepRecords

log = logging.getLogger(__name__)


def bars(table: pd.DataFrame, path: Path, title: str) -> Path:
    columns = list(dict.fromkeys(table["column"]))
    rows = list(dict.fromkeys(table["row"]))
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(columns) * len(rows) + 2.5), 4.5), layout="constrained")
    x = np.arange(len(columns))
    for i, row in enumerate(rows):
        mine = table[table["row"] == row].set_index("column").reindex(columns)
        bars = ax.bar(
            x + (i - (len(rows) - 1) / 2) * width,
            mine["mean"].fillna(0),
            width,
            label=row,
            yerr=mine["std"].fillna(0),
            capsize=2,
        )
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=2)
    ax.set_xticks(x, columns)
    ax.set_ylabel(
        str(table["metric"].dropna().iloc[0]) + " (mean ± std over seeds)" if table["metric"].notna().any() else "test"
    )
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def curves(table: pd.DataFrame, trials: dict[str, pd.DataFrame], metric: str, path: Path) -> Path:
    """``trials``: run id -> its trial row (with its ``curve``), for every run in ``table``."""
    columns = [c for c in dict.fromkeys(table["column"]) if c != "average"]
    fig, axes = plt.subplots(
        1, len(columns), figsize=(4.2 * len(columns) + 2, 3.6), squeeze=False, sharey=True, layout="constrained"
    )
    for ax, column in zip(axes[0], columns):
        for line in table[table["column"] == column].itertuples():
            runs = [trials[r] for r in json.loads(line.run_ids) if r in trials]
            points = pd.DataFrame([p for run in runs for p in run["curve"]], columns=["epoch", "value"])
            if points.empty:
                continue
            mean = points.groupby("epoch")["value"].mean()
            ax.plot(mean.index, mean.values, marker="o", label=line.row)
        ax.set_title(column)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].set_ylabel(metric + " (mean over seeds)")
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def optuna_plots(sweep: SweepRecords, language: str, folder: Path) -> list[Path]:
    """Optuna's parallel-coordinate and importance plots of a searched sweep's keys for one language."""
    import optuna
    from optuna.visualization import matplotlib as optuna_plt
    from pydantic import TypeAdapter

    from flare_ray.experiment.distributions import Distribution, with_float_log

    raw = sweep.config["search"].get("space") or {}
    if not raw:
        return []
    space = TypeAdapter(dict[str, Distribution]).validate_python(with_float_log(raw))
    study = optuna.create_study(direction="maximize" if sweep.mode == "max" else "minimize")
    trials = sweep.trials[(sweep.trials["language"] == language) & sweep.trials["validation"].notna()]
    for trial in trials.itertuples():
        values = json.loads(trial.configuration)
        params, distributions = {}, {}
        for key, spec in space.items():
            if key in values:
                value = values[key]
                labels = getattr(spec, "labels", None)
                params[key] = value if labels is None or value in spec.labels() else json.dumps(value, sort_keys=True)
                distributions[key] = spec.optuna()
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=trial.validation))
    out = []
    stem = f"optuna-{_slug(sweep.name)}-{language}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optuna's ExperimentalWarning for its matplotlib backend
        for kind, plot in (
            ("parallel", optuna_plt.plot_parallel_coordinate),
            ("importance", optuna_plt.plot_param_importances),
        ):
            try:
                ax = plot(study)
            except Exception as err:  # noqa: BLE001 - e.g. too few trials for importances
                log.warning("no Optuna %s plot for %s/%s: %s", kind, sweep.name, language, err)
                continue
            ax = ax.flat[0] if isinstance(ax, np.ndarray) else ax
            ax.figure.suptitle(f"{sweep.name}, {language}: {sweep.metric} of {len(trials)} trials", fontsize="medium")
            out.append(_save(ax.figure, folder / f"{stem}-{kind}.png"))
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path

"""The report's figures, as PNG files, each with a caption that says what it shows.

* ``bars.png``: per column (language), one bar per row, the mean gold-test score over seeds with its std as
  whiskers, and each seed's score as a dot;
* ``curves.png``: per language, the MT-validation curve of each row's selected configuration (the mean over
  its seeds per epoch, ± one std as a band), and beside or below it the training loss likewise;
* ``grid-<sweep>.png``: for a sweep with a ``search.grid``, per language, every trial's validation score (the
  selection's) against its test score, one colour per grid cell;
* ``optuna-<sweep>-<language>-{parallel,importance}.png``: for a sweep with a ``search.space``, Optuna's
  parallel-coordinate and parameter-importance plots (its matplotlib backend) of the searched keys, from a
  study rebuilt from the trials' MLflow records.

matplotlib (Agg: files only) and Optuna are imported when a figure is drawn, not with this module.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .records import SweepRecords

if TYPE_CHECKING:
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)
SEED_DOT = {"color": "black", "s": 14, "zorder": 3, "alpha": 0.8}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    return plt


def _seed_scores(line) -> list[float]:
    scores = line.get("scores") if isinstance(line, dict) else getattr(line, "scores", None)
    return json.loads(scores) if isinstance(scores, str) else []


def bar_figure(table: pd.DataFrame, title: str) -> Figure:
    """Per column, one bar per row: the mean, ± std whiskers, and one dot per seed (its ``scores``)."""
    plt = _pyplot()
    columns = list(dict.fromkeys(table["column"]))
    rows = list(dict.fromkeys(table["row"]))
    width = 0.8 / max(len(rows), 1)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.45 * len(columns) * len(rows) + 2.5), 4.5), layout="constrained")
    x = np.arange(len(columns))
    for i, row in enumerate(rows):
        mine = table[table["row"] == row].set_index("column").reindex(columns)
        where = x + (i - (len(rows) - 1) / 2) * width
        bars = ax.bar(where, mine["mean"].fillna(0), width, label=row, yerr=mine["std"].fillna(0), capsize=2)
        ax.bar_label(bars, fmt="%.1f", fontsize="x-small", padding=2)
        dots_x, dots_y = [], []
        for position, column in zip(where, columns):
            scores = _seed_scores(mine.loc[column].to_dict()) if column in mine.index else []
            spread = np.linspace(-width / 4, width / 4, len(scores)) if len(scores) > 1 else np.zeros(len(scores))
            dots_x += list(position + spread)
            dots_y += scores
        ax.scatter(dots_x, dots_y, label="each seed" if i == 0 else None, **SEED_DOT)
    ax.set_xticks(x, columns)
    metric = str(table["metric"].dropna().iloc[0]) if table["metric"].notna().any() else "test"
    ax.set_ylabel(f"{metric} (mean ± std over seeds; dots: seeds)")
    ax.set_title(title)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def bars(table: pd.DataFrame, path: Path, title: str) -> Path:
    return _save(bar_figure(table, title), path)


def bars_caption(table: pd.DataFrame) -> str:
    metric = str(table["metric"].dropna().iloc[0]) if table["metric"].notna().any() else "the test metric"
    seeds = sorted({int(n) for n in table["n"].dropna()})
    return (
        f"Test score ({metric}, the gold test split) per language and row: each bar is the mean over the seeds "
        f"of the row's selected configuration, its whiskers ± one standard deviation, and each dot one seed's "
        f"score (n = {', '.join(map(str, seeds))} seeds)."
    )


def _mean_and_std(runs: list[dict], curve: str) -> pd.DataFrame | None:
    points = pd.DataFrame([p for run in runs for p in (run.get(curve) or [])], columns=["epoch", "value"])
    if points.empty:
        return None
    return points.groupby("epoch")["value"].agg(["mean", "std"]).fillna({"std": 0.0})


def curve_figure(table: pd.DataFrame, trials: dict[str, dict], metric: str) -> Figure:
    """Per language: the validation curve (top; left for one language) and training loss (bottom; right, where
    any trial logged one) of each row's selected configuration, mean over its seeds per epoch ± one std as a band."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    columns = [c for c in dict.fromkeys(table["column"]) if c != "average"]
    lines = {c: list(table[table["column"] == c].itertuples()) for c in columns}
    runs_of = {
        (c, line.row): [trials[r] for r in json.loads(line.run_ids) if r in trials]
        for c in columns
        for line in lines[c]
    }
    panels = [("curve", f"{metric} (mean ± std over seeds)")]
    if any(run.get("loss_curve") for runs in runs_of.values() for run in runs):
        panels.append(("loss_curve", "train/loss (mean ± std over seeds)"))
    side_by_side = len(columns) == 1  # one language: its two panels in a row, else a row per panel
    shape = (1, len(panels)) if side_by_side else (len(panels), len(columns))
    fig, axes = plt.subplots(
        *shape,
        figsize=(4.6 * shape[1] + 2, 3.4 * shape[0]),
        squeeze=False,
        sharey=False if side_by_side else "row",
        sharex=True,
        layout="constrained",
    )
    for j, column in enumerate(columns):
        for i, (curve, label) in enumerate(panels):
            ax = axes[0][i] if side_by_side else axes[i][j]
            for k, line in enumerate(lines[column]):
                stats = _mean_and_std(runs_of[(column, line.row)], curve)
                if stats is None:
                    continue
                color = f"C{k}"
                ax.plot(stats.index, stats["mean"], marker="o", color=color, label=line.row)
                ax.fill_between(
                    stats.index, stats["mean"] - stats["std"], stats["mean"] + stats["std"], color=color, alpha=0.2
                )
            if i == 0 or side_by_side:
                ax.set_title(column)
            if j == 0:
                ax.set_ylabel(label)
            if side_by_side or i == len(panels) - 1:
                ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def curves(table: pd.DataFrame, trials: dict[str, dict], metric: str, path: Path) -> Path:
    """``trials``: run id -> its trial row (with its ``curve`` and ``loss_curve``), for every run in ``table``."""
    return _save(curve_figure(table, trials, metric), path)


def curves_caption(metric: str) -> str:
    return (
        f"Training curves of each row's selected configuration, per language: {metric} on the validation split "
        "after each epoch (the selection metric), and the training loss of each epoch (train/loss). "
        "Lines are the mean over seeds, bands ± one standard deviation."
    )


def grid_figure(sweep: SweepRecords, trials: pd.DataFrame) -> Figure | None:
    """Per language, every trial of a grid sweep: its validation score against its test score, one colour per
    grid cell (``trials``: with the report's ``row`` of each); None for a sweep without a grid or test scores."""
    test = f"test/{sweep.test_metric}"
    if not sweep.config["search"].get("grid") or test not in trials:
        return None
    plt = _pyplot()
    mine = trials[(trials["sweep"] == sweep.name) & trials["validation"].notna() & trials[test].notna()]
    if mine.empty:
        return None
    languages = [lang for lang in sweep.languages if (mine["language"] == lang).any()]
    fig, axes = plt.subplots(
        1, len(languages), figsize=(4.6 * len(languages) + 2, 4.0), squeeze=False, layout="constrained"
    )
    rows = list(dict.fromkeys(mine["row"]))
    for ax, language in zip(axes[0], languages):
        here = mine[mine["language"] == language]
        for k, row in enumerate(rows):
            cell = here[here["row"] == row]
            ax.scatter(cell["validation"], cell[test], color=f"C{k}", label=row, s=22, alpha=0.85)
        ax.set_title(f"{sweep.name}, {language}")
        ax.set_xlabel(f"{sweep.metric} (best epoch)")
    axes[0][0].set_ylabel(test)
    axes[0][-1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def grid_plot(sweep: SweepRecords, trials: pd.DataFrame, folder: Path) -> list[Path]:
    fig = grid_figure(sweep, trials)
    return [] if fig is None else [_save(fig, folder / f"grid-{_slug(sweep.name)}.png")]


def grid_caption(sweep: SweepRecords) -> str:
    return (
        f"Every trial of the grid of {sweep.name}, per language: its selection score ({sweep.metric} at its best "
        f"epoch, validation split; x) against its test score (test/{sweep.test_metric}; y), one colour per grid "
        "cell, one dot per trial (a seed, or a sampled configuration of the cell)."
    )


def optuna_plots(sweep: SweepRecords, language: str, folder: Path) -> list[Path]:
    """Optuna's parallel-coordinate and importance plots of a searched sweep's keys for one language."""
    raw = sweep.config["search"].get("space") or {}
    if not raw:
        return []
    import optuna
    from optuna.visualization import matplotlib as optuna_plt
    from pydantic import TypeAdapter

    from flare_ray.experiment.distributions import Distribution, with_float_log

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


def optuna_caption(sweep: SweepRecords, path: Path) -> str:
    language = path.stem.rsplit("-", 2)[-2]
    if path.stem.endswith("-parallel"):
        return (
            f"Optuna's parallel-coordinate plot of {sweep.name}, {language}: one line per trial through its values "
            f"of the searched keys, coloured by its {sweep.metric} (the selection metric)."
        )
    return (
        f"Optuna's hyperparameter importances of {sweep.name}, {language} (fANOVA): the share of the variance of "
        f"{sweep.metric} over the trials that each searched key explains."
    )


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path

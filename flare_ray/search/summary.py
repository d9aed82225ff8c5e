"""The end of a sweep: one row per trial, the best configuration per language, and the printed table.

Selection with seeds (:func:`select_best`) follows :func:`flare_ray.selection.best_configuration` (the best
mean MT-validation score over seeds); the selected configuration's registered adapter is its
best-validation seed.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from flare_ray.selection import best_configuration
from flare_ray.tracking.urls import ui_command

from .searches import Search, configuration, seeded


class NoTrialReported(RuntimeError):
    """A language has nothing to select from."""


@dataclass
class LanguageResult:
    """The best configuration of one target language: its MT-validation and gold-test scores (means over its
    seeds), and the trial of its best seed (the registered adapter)."""

    language: str
    trial_id: str
    run_id: str | None
    hyperparameters: dict[str, Any]
    validation: float
    test: dict[str, float]
    best_epoch: int | None
    trials: int
    registered: str | None = None
    seeds: list[int | None] = field(default_factory=lambda: [None])
    validation_std: float = 0.0
    seed: int | None = None  # the registered trial's seed
    seed_validation: float | None = None  # its validation score


def trial_rows(grid, search: Search, metric: str, mode: str) -> list[dict[str, Any]]:
    """One row per trial of a search that finished and reported ``metric``: its configuration, seed, best
    validation score (over its epochs), best epoch and test scores. A trial that failed is no candidate."""
    rows = []
    for result in grid:
        if result.error is not None:  # it did not finish its schedule (an error, a killed process): not a candidate
            continue
        frame = result.metrics_dataframe
        if frame is None or metric not in frame:
            continue
        frame = frame.dropna(subset=[metric])
        if frame.empty:
            continue
        best = frame.loc[frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()]
        sample = seeded(dict(result.config or {}), search.config.search.seed_list)
        final = result.metrics or {}
        epoch = best.get("epoch")
        rows.append(
            {
                "trial_id": final.get("trial_id") or str(best.get("trial_id")),
                "configuration": json.dumps(configuration(sample, search.cell), sort_keys=True, default=str),
                "seed": sample.get("training.seed", search.config.training.seed),
                "validation": float(best[metric]),
                "best_epoch": None if epoch is None or (isinstance(epoch, float) and math.isnan(epoch)) else int(epoch),
                "test": {
                    k: float(v) for k, v in final.items() if k.startswith("test/") and isinstance(v, (int, float))
                },
            }
        )
    return rows


def select_best(rows: list[dict[str, Any]], metric: str, mode: str, language: str) -> LanguageResult:
    """The configuration with the best mean validation score over its seeds (ties: lower std), and its best seed."""
    if not rows:
        raise NoTrialReported(
            f"no trial of {language} reported {metric}: every one failed or stopped before its first "
            "epoch (their errors and logs are above)"
        )
    frame = pd.DataFrame(rows)
    chosen, stats = best_configuration(frame, mode)
    mine = frame[frame["configuration"] == chosen]
    best = mine.loc[mine["validation"].idxmax() if mode == "max" else mine["validation"].idxmin()]
    tests = pd.DataFrame(list(mine["test"]))
    test = {k: float(tests[k].mean()) for k in tests.columns if tests[k].notna().all()} if len(tests.columns) else {}
    return LanguageResult(
        language=language,
        trial_id=best["trial_id"],
        run_id=None,
        hyperparameters=json.loads(chosen),
        validation=float(stats.loc[chosen, "mean"]),
        test=test,
        best_epoch=best["best_epoch"],
        trials=len(frame),
        seeds=sorted(mine["seed"].tolist(), key=str),
        validation_std=float(stats.loc[chosen, "std"]),
        seed=best["seed"],
        seed_validation=float(best["validation"]),
    )


@dataclass
class SweepSummary:
    name: str
    metric: str
    tracking_uri: str
    experiment_name: str
    parent_run_id: str
    languages: list[LanguageResult] = field(default_factory=list)
    trials: int = 0  # trials of the sweep
    failed: int = 0  # of them, trials that errored
    timing: Any = None  # where the trials' time went (flare_ray.search.progress.TimeAccount), once they ended
    runs_url: str | None = None  # the browser URL of its runs table (flare_ray.tracking.mlflow_runs.sweep_runs_url)

    def average(self) -> dict[str, float]:
        """The mean over languages of the validation score and of each test score every language has."""
        keys = sorted({k for r in self.languages for k in r.test})
        out = {"validation": sum(r.validation for r in self.languages) / len(self.languages)}
        for k in keys:
            values = [r.test[k] for r in self.languages if k in r.test]
            if len(values) == len(self.languages):
                out[k] = sum(values) / len(values)
        return out

    def table(self) -> str:
        """The best trial per language: hyperparameters, MT-validation and gold-test scores, and the average."""
        test_keys = sorted({k for r in self.languages for k in r.test})
        seeded = any(len(r.seeds) > 1 for r in self.languages)
        header = [
            "language",
            "trial",
            self.metric + (" (mean ± std)" if seeded else ""),
            *test_keys,
            *(["seeds"] if seeded else []),
            "best epoch",
            "hyperparameters",
        ]
        rows = [
            [
                r.language,
                r.trial_id,
                f"{r.validation:.2f}" + (f" ± {r.validation_std:.2f}" if seeded else ""),
                *(_fmt(r.test.get(k)) for k in test_keys),
                *([str(len(r.seeds))] if seeded else []),
                str(r.best_epoch),
                ", ".join(f"{k}={v}" for k, v in sorted(r.hyperparameters.items())) or "-",
            ]
            for r in self.languages
        ]
        if len(self.languages) > 1:
            avg = self.average()
            rows.append(
                [
                    "average",
                    "",
                    f"{avg['validation']:.2f}",
                    *(_fmt(avg.get(k)) for k in test_keys),
                    *([""] if seeded else []),
                    "",
                    "",
                ]
            )
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        failed = [f"{self.failed} of {self.trials} trials failed"] if self.failed else []
        return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows), *failed])

    def where(self) -> str:
        """Where the sweep's MLflow records are: the experiment, its parent run, the command that starts the
        UI and the runs table's URL (MLflow 3's UI opens an experiment on its GenAI pages unless the URL asks for
        its runs: :mod:`flare_ray.tracking.urls`)."""
        lines = [
            f"MLflow: experiment '{self.experiment_name}', parent run {self.parent_run_id}",
            f"  start the UI: {ui_command(self.tracking_uri)}",
        ]
        if self.runs_url:
            lines.append(f"  its runs:     {self.runs_url}")
        return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"

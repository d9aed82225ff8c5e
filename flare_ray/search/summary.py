"""The end of a sweep: the best trial per language (Ray's ``ResultGrid`` chooses it) and the printed table."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass
class LanguageResult:
    """The best trial of one target language: its MT-validation score and gold-test scores."""

    language: str
    trial_id: str
    run_id: str | None
    hyperparameters: dict[str, Any]
    validation: float
    test: dict[str, float]
    best_epoch: int | None
    trials: int
    registered: str | None = None


def select_best(grid, metric: str, mode: str, language: str) -> LanguageResult:
    """The trial with the best score over all its epochs (``ResultGrid.get_best_result(scope="all")``)."""
    try:
        result = grid.get_best_result(metric=metric, mode=mode, scope="all")
    except RuntimeError:
        raise RuntimeError(f"no trial for {language} reported {metric}; see the trial errors above") from None
    frame = result.metrics_dataframe.dropna(subset=[metric])
    row = frame.loc[frame[metric].idxmax() if mode == "max" else frame[metric].idxmin()]
    final = result.metrics or {}
    epoch = row.get("epoch")
    return LanguageResult(
        language=language,
        trial_id=final.get("trial_id") or str(row.get("trial_id")),
        run_id=None,
        hyperparameters=dict(result.config or {}),
        validation=float(row[metric]),
        test={k: float(v) for k, v in final.items() if k.startswith("test/") and isinstance(v, (int, float))},
        best_epoch=None if epoch is None or (isinstance(epoch, float) and math.isnan(epoch)) else int(epoch),
        trials=len(grid),
    )


@dataclass
class SweepSummary:
    name: str
    metric: str
    tracking_uri: str
    experiment_name: str
    parent_run_id: str
    languages: list[LanguageResult] = field(default_factory=list)

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
        header = ["language", "trial", self.metric, *test_keys, "best epoch", "hyperparameters"]
        rows = [
            [r.language, r.trial_id, f"{r.validation:.2f}", *(_fmt(r.test.get(k)) for k in test_keys),
             str(r.best_epoch), ", ".join(f"{k}={v}" for k, v in sorted(r.hyperparameters.items())) or "-"]
            for r in self.languages
        ]  # fmt: skip
        if len(self.languages) > 1:
            avg = self.average()
            rows.append(["average", "", f"{avg['validation']:.2f}", *(_fmt(avg.get(k)) for k in test_keys), "", ""])
        widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
        line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])

    def where(self) -> str:
        return (
            f"MLflow: experiment '{self.experiment_name}', parent run {self.parent_run_id}\n"
            f"  mlflow ui --backend-store-uri {self.tracking_uri}"
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"

"""What a report is built from: a sweep's records in MLflow, and nothing else.

A sweep is found by its name (the parent run's ``flare_ray.sweep`` tag, the newest such run in any
experiment) or by its parent run id. Its parent run holds the resolved config (``config.json``) and the
data provenance per language (``data_provenance.json``); each child run (one per trial) is
self-describing: its language, method, grid cell, configuration and seed as tags, its resolved config as
params, its validation and training-loss curves and test scores as metrics, and its per-example
predictions as ``predictions/<split>.parquet``. So a report can be made of any past sweep, also one that
ran on a cluster.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from flare_ray.secrets import redact
from flare_ray.tasks import TASKS
from flare_ray.tracking import mlflow_runs

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the console is for the report
TRAIN_LOSS = "train/loss"  # the training loss per epoch, the report's second curve


class ReportError(ValueError):
    """A sweep that cannot be reported: not found, or no trial with results."""


@dataclass
class SweepRecords:
    """One sweep as MLflow holds it: its parent run, config, provenance and one row per trial."""

    name: str
    parent_run_id: str
    experiment_id: str
    config: dict[str, Any]  # the resolved experiment config, as the parent run logged it
    provenance: dict[str, Any]  # language -> what each split is made of
    trials: pd.DataFrame  # one row per child run (see :func:`trial_frame`)
    client: MlflowClient = field(repr=False)
    tags: dict[str, str] = field(default_factory=dict, repr=False)  # the parent run's

    @property
    def task(self) -> str:
        return self.config["task"]["name"]

    @property
    def languages(self) -> list[str]:
        return list(self.config["task"]["languages"])

    @property
    def metric(self) -> str:
        """The selection metric (MT validation)."""
        return self.config["search"]["metric"]

    @property
    def mode(self) -> str:
        return self.config["search"].get("mode", "max")

    @property
    def test_metric(self) -> str:
        """The paper's metric of the task on the gold test split (Table 1: accuracy, exact match, macro F1)."""
        return TASKS[self.task].primary_metric

    def deviations(self, language: str) -> list[str]:
        """Where the data, splits or model of ``language`` are not the paper's setting."""
        out = []
        for role, made in (self.provenance.get(language) or {}).items():
            if isinstance(made, dict) and made.get("as_in_paper") is False:
                out.append(f"{role}: {made.get('made_of', made.get('recipe'))}")
        for role, limit in (self.config["task"].get("max_records") or {}).items():
            if limit is not None:
                out.append(f"{role}: only the first {limit} records")
        model = str(self.config["model"]["name_or_path"])
        if model.startswith("tiny:"):
            out.append(f"model: {model}, a tiny randomly initialised model")
        return out

    @cached_property
    def _downloads(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="flare_ray-report-"))

    def predictions(self, run_id: str, split: str = "test") -> pd.DataFrame | None:
        """The per-example predictions a trial logged for ``split``; None if it logged none."""
        try:
            path = self.client.download_artifacts(
                run_id, f"{mlflow_runs.PREDICTIONS_PATH}/{split}.parquet", str(self._downloads)
            )
        except Exception:  # noqa: BLE001 - mlflow raises its own error types for a missing artifact
            return None
        return pd.read_parquet(path)


def find_parent(client: MlflowClient, reference: str):
    """The parent run of the sweep named ``reference`` (the newest), or the parent run with that id."""
    try:
        run = client.get_run(reference)
    except Exception:  # noqa: BLE001 - not a run id
        run = None
    if run is not None:
        if mlflow_runs.SWEEP_TAG not in run.data.tags:
            raise ReportError(
                f"run {reference} is not the parent run of a sweep (it has no {mlflow_runs.SWEEP_TAG} tag)"
            )
        return run
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = (
        client.search_runs(
            experiments,
            filter_string=f"tags.`{mlflow_runs.SWEEP_TAG}` = '{reference}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if experiments
        else []
    )
    if not runs:
        raise ReportError(f"no sweep named {reference!r} and no run with that id in {redact(client.tracking_uri)}")
    return runs[0]


def load_sweep(client: MlflowClient, reference: str) -> SweepRecords:
    """A sweep's records, from MLflow alone."""
    parent = find_parent(client, reference)
    run_id = parent.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        config = json.loads(Path(client.download_artifacts(run_id, "config.json", tmp)).read_text())
        try:
            provenance = json.loads(Path(client.download_artifacts(run_id, "data_provenance.json", tmp)).read_text())
        except Exception:  # noqa: BLE001 - an older sweep without it
            provenance = {}
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.`{MLFLOW_PARENT_RUN_ID}` = '{run_id}'", max_results=50_000
    )
    metric, mode = config["search"]["metric"], config["search"].get("mode", "max")
    trials = trial_frame(client, children, metric, mode, config)
    return SweepRecords(
        parent.data.tags[mlflow_runs.SWEEP_TAG],
        run_id,
        parent.info.experiment_id,
        config,
        provenance,
        trials,
        client,
        dict(parent.data.tags),
    )


def trial_frame(client: MlflowClient, children, metric: str, mode: str, config: dict[str, Any]) -> pd.DataFrame:
    """One row per child run: language, method, cell, configuration, arm (an ablation's), seed, the best validation score over
    its epochs (and that epoch), its validation curve (``curve``) and training-loss curve (``loss_curve``:
    (epoch, ``train/loss``)), its params (the resolved config) and its test scores (``test/<metric>`` columns)."""
    rows = []
    for run in children:
        tags, metrics = run.data.tags, run.data.metrics
        history = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, metric))
        history = [(s, v) for s, v in history if math.isfinite(v)]
        best = (max if mode == "max" else min)(history, key=lambda sv: sv[1]) if history else (None, math.nan)
        losses = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, TRAIN_LOSS))
        seed = tags.get(mlflow_runs.SEED_TAG)
        rows.append(
            {
                "run_id": run.info.run_id,
                "trial_id": tags.get(mlflow_runs.TRIAL_TAG),
                "status": run.info.status,
                "language": tags.get(mlflow_runs.LANGUAGE_TAG),
                "method": tags.get(mlflow_runs.METHOD_TAG, config["method"]["kind"]),
                "cell": tags.get(mlflow_runs.CELL_TAG, "{}"),
                "configuration": tags.get(mlflow_runs.CONFIGURATION_TAG, "{}"),
                "arm": tags.get(mlflow_runs.ARM_TAG),  # an ablation's arm (None: no ablation)
                "seed": None if seed in (None, "None") else int(seed),
                "validation": best[1],
                "best_epoch": best[0],
                "curve": history,
                "loss_curve": [(s, v) for s, v in losses if math.isfinite(v)],
                "params": dict(run.data.params),
                **{k: v for k, v in metrics.items() if k.startswith("test/")},
            }
        )
    columns = [
        "run_id",
        "trial_id",
        "status",
        "language",
        "method",
        "cell",
        "configuration",
        "arm",
        "seed",
        "validation",
        "best_epoch",
        "curve",
        "loss_curve",
        "params",
    ]
    frame = pd.DataFrame(rows, columns=columns + sorted({k for r in rows for k in r} - set(columns)))
    return frame.sort_values("trial_id", kind="stable", key=lambda ids: ids.fillna("")).reset_index(
        drop=True
    )  # run order

"""An ablation's arms end to end: ``python -m flare_ray.tune`` on the small FLARE search with ``search.ablation``
(the baseline, add_relu, and two arms, add and mul) x one seed on a local Ray and a real MLflow store: each child
run is tagged with its arm, and the report made at the end has the arms as rows, the baseline first, each other
arm with its Δ against the baseline (``report.baseline`` left to its default) and the interval. Slow (about a
minute); CI runs it."""

from __future__ import annotations

import pandas as pd
import pytest
from mlflow.artifacts import download_artifacts

from tests.sweeps import SHORT, mlflow_runs, run_tune

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ARMS = [
    *SHORT,
    "search.space={}",
    "search.num_samples=1",
    "search.seeds=[0]",
    "search.ablation={baseline: {method.flare.fusion: add_relu}, vary: {method.flare.fusion: [add, mul]}}",
]


def test_an_ablation_sweep_reports_its_arms_baseline_first_with_deltas(tmp_path):
    done = run_tune(tmp_path, *ARMS)
    client, (parent,), children = mlflow_runs(tmp_path)
    arms = sorted(c.data.tags["flare_ray.arm"] for c in children)
    assert arms == ["baseline", "method.flare.fusion=add", "method.flare.fusion=mul"]  # 3 arms x 1 seed
    for child in children:
        fusion = child.data.params["method.flare.fusion"]
        assert child.data.tags["flare_ray.arm"] == (
            "baseline" if fusion == "add_relu" else f"method.flare.fusion={fusion}"
        )

    folder = tmp_path / "downloads"
    download_artifacts(
        run_id=parent.info.run_id,
        artifact_path="report",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        dst_path=str(folder),
    )
    table = pd.read_csv(folder / "report" / "report.csv")
    jav = table[table["column"] == "jav"]
    assert list(jav["row"]) == ["baseline", "fusion=add", "fusion=mul"]
    assert set(jav["baseline"]) == {"baseline"} and jav["delta"].iloc[1:].notna().all()
    assert (jav["delta_low"].iloc[1:] <= jav["delta"].iloc[1:]).all() and (
        jav["delta"].iloc[1:] <= jav["delta_high"].iloc[1:]
    ).all()
    assert "Δ vs baseline" in done.stdout

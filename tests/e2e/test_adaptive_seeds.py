"""Adaptive seeds end to end: ``python -m flare_ray.tune`` on the small FLARE search with three ablation arms from a
baseline (learning rate 2e-2): one that cannot learn in three epochs (1e-6), one that changes nothing (the evaluation
batch size), and ``search.seeds: {min: 2, max: 3}``, on a local Ray and a real MLflow store: the arm that cannot
learn is decided against the best after its first two seeds and runs no third, the baseline and its twin each run
a third, every child run says why it ran (``flare_ray.seed_reason``), each round's decisions are on the parent run
(``seeds/<search>.json``), and the sweep finishes (8 of at most 9 trials: not "interrupted"). It is also the
ablation's end-to-end test: each child run is tagged with its arm, and the report made at the end has the arms as
rows, the baseline first, each other arm with its Δ against the baseline (``report.baseline`` left to its default)
and the interval, and each row's seed count. Slow (about 80 s); CI runs it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from mlflow.artifacts import download_artifacts

from tests.sweeps import mlflow_runs, run_tune

pytestmark = [pytest.mark.slow, pytest.mark.ray]

ADAPTIVE = [
    "training.epochs=3",
    "search.scheduler=null",
    "search.space={}",
    "search.num_samples=null",
    # three arms: the baseline; 1e-6, which cannot learn; another evaluation batch size, which changes nothing
    "search.ablation={baseline: {training.learning_rate: 2.0e-2, training.eval_batch_size: 32}, "
    "vary: {training.learning_rate: [1.0e-6], training.eval_batch_size: [64]}}",
    "search.seeds={min: 2, max: 3}",
    "search.metric=validation/accuracy",
    "task.max_records={train: 500, validation: 200, test: 64}",  # enough to tell 1e-6 from the others
]


def test_adaptive_seeds_spend_no_third_seed_on_an_arm_that_cannot_learn(tmp_path):
    done = run_tune(tmp_path, *ADAPTIVE)
    client, (parent,), children = mlflow_runs(tmp_path)
    assert parent.info.status == "FINISHED"
    seeds = Counter(c.data.tags["flare_ray.arm"] for c in children)
    # the stuck arm decided after search.seeds.min; the baseline and its twin undecided up to max
    assert seeds == {"baseline": 3, "training.learning_rate=1e-06": 2, "training.eval_batch_size=64": 3}, seeds
    reasons = {c.data.tags["flare_ray.seed_reason"] for c in children}
    assert (
        "seed 1 of the first 2 (search.seeds.min)" in reasons and "seed 2 of the first 2 (search.seeds.min)" in reasons
    )
    more = sorted(c.data.tags["flare_ray.seed_reason"] for c in children if c.data.tags["flare_ray.seed"] == "2")
    assert more[0].startswith("the best cell: 1 cell undecided against it"), more
    assert more[1].startswith("undecided against the best cell ("), more

    (artifact,) = [a.path for a in client.list_artifacts(parent.info.run_id, "seeds")]
    (tmp_path / "dl").mkdir()
    record = json.loads(Path(client.download_artifacts(parent.info.run_id, artifact, str(tmp_path / "dl"))).read_text())
    assert record["finished"] and record["min"] == 2 and record["max"] == 3
    stuck = next(c for c in record["rounds"][0]["cells"] if c["cell"]["training.learning_rate"] == 1.0e-6)
    assert stuck["next_seed"] is None and stuck["high"] < 0  # decided: clearly worse than the best
    assert "interrupted" not in done.stdout + done.stderr
    for child in children:  # each trial's arm: what its values change from the baseline
        lr, batch = child.data.params["training.learning_rate"], child.data.params["training.eval_batch_size"]
        expected = {("1e-06", "32"): "training.learning_rate=1e-06", ("0.02", "64"): "training.eval_batch_size=64"}
        assert child.data.tags["flare_ray.arm"] == expected.get((lr, batch), "baseline"), (lr, batch)

    download_artifacts(
        run_id=parent.info.run_id,
        artifact_path="report",
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        dst_path=str(tmp_path / "downloads"),
    )
    table = pd.read_csv(tmp_path / "downloads" / "report" / "report.csv")
    jav = table[table["column"] == table["column"].iloc[0]]
    assert list(jav["row"]) == ["baseline", "learning_rate=1e-06", "eval_batch_size=64"]
    assert list(jav["n"]) == [3, 2, 3]  # the seeds each row got
    assert set(jav["baseline"]) == {"baseline"} and jav["delta"].iloc[1:].notna().all()
    assert (jav["delta_low"] <= jav["delta"]).iloc[1:].all() and (jav["delta"] <= jav["delta_high"]).iloc[1:].all()
    assert "Δ vs baseline" in done.stdout

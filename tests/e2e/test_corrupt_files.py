"""Damaged files between two sweeps (issue 28, item 6), through ``python -m flare_ray.tune``: the stage-1
adapter that the first sweep trained (``model.stage1: auto``) and the source-cache shard its trials shared are
truncated, as a full disk or a killed copy leaves them; the second sweep trains stage 1 again and builds the
cache again, each with a line naming the file, and every trial finishes. Without Ray:
``unit/test_file_digests.py``."""

from __future__ import annotations

import pytest

from tests.sweeps import SHORT, mlflow_runs, run_tune

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SWEEP = [
    "model.stage1=auto",
    "stage1.training={epochs: 1, batch_size: 16, max_length: 64}",
    "search.space={}",
    "search.num_samples=2",
    "search.max_concurrent_trials=2",
    *SHORT,
]


def truncate(path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def sweep_logs(storage, sweep: str) -> list[str]:
    """The lines of every trial log of ``sweep``."""
    return [line for f in storage.glob(f"logs/{sweep}-jav/*.log") for line in f.read_text().splitlines()]


def finished_trials(storage, sweep: str) -> tuple[int, int]:
    """(trials FINISHED with their test scores, trials) of ``sweep``'s MLflow parent run."""
    _, parents, children = mlflow_runs(storage)
    (parent,) = [p for p in parents if p.data.tags["flare_ray.sweep"] == sweep]
    mine = [c for c in children if c.data.tags["mlflow.parentRunId"] == parent.info.run_id]
    return sum(c.info.status == "FINISHED" and "test/macro_f1" in c.data.metrics for c in mine), len(mine)


def test_a_truncated_stage1_adapter_and_cache_shard_are_made_again_and_every_trial_finishes(tmp_path, fault_summary):
    first = run_tune(tmp_path, *SWEEP)
    assert "stage 1: trained" in first.stdout
    (stage1,) = [p for p in (tmp_path / "stage1").iterdir() if not p.name.startswith(".")]
    (cache,) = (tmp_path / "source_cache").iterdir()
    adapter, shard = stage1 / "adapter_model.safetensors", cache / "rows.safetensors"
    truncate(adapter)
    truncate(shard)

    again = ["name=quickstart-again", "tracking.experiment_name=quickstart"]
    second = run_tune(tmp_path, *SWEEP, *again)
    assert f"{adapter} has" in second.stderr and "training it again" in second.stderr, second.stderr[-3000:]
    assert "stage 1: trained" in second.stdout and "stage 1: reused" not in second.stdout
    # Stage 1 trained again to the same bytes keeps the cache's key: the truncated shard is found and built
    # again; to other bytes (CPU training need not repeat bit for bit), a new cache is built beside it. Either
    # way once, by one trial; the other reads it (and may have found the damage too while it waited).
    logs = sweep_logs(tmp_path, "quickstart-again")
    built = [line for line in logs if line.startswith(("source cache: rebuilt", "source cache: built"))]
    assert len(built) == 1, logs[-40:]
    assert finished_trials(tmp_path, "quickstart-again") == (2, 2)

    # The shard the second sweep's trials read, truncated under a stage 1 that is reused: built again.
    (shard,) = [p for p in (tmp_path / "source_cache").glob("*/rows.safetensors") if p.parent.name in built[0]]
    truncate(shard)
    third = run_tune(tmp_path, *SWEEP, "search.num_samples=1", "name=quickstart-third", again[1])
    assert "stage 1: reused" in third.stdout
    logs = sweep_logs(tmp_path, "quickstart-third")
    assert any(line.startswith(f"warning: source cache {shard.parent}: {shard} has") for line in logs), logs[-40:]
    assert [line.split(" /")[0] for line in logs if line.startswith("source cache:")] == ["source cache: rebuilt"]
    assert finished_trials(tmp_path, "quickstart-third") == (1, 1)

    completed = finished_trials(tmp_path, "quickstart-again")[0] + finished_trials(tmp_path, "quickstart-third")[0]
    fault_summary(
        "truncate the stage-1 adapter and a source-cache shard",
        failures_injected=3,
        trials_completed=f"{completed}/3",
        mlflow_runs=len(mlflow_runs(tmp_path)[2]),
        failed_trials=3 - completed,
        rebuilt="stage 1, source cache",
    )

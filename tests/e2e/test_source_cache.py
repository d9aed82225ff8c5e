"""The source cache of a sweep: built once by one trial, read by the others (``python -m flare_ray.tune``). The
cache itself, without Ray: ``unit/test_source_cache.py``."""

from __future__ import annotations

import pytest

from tests.sweeps import mlflow_runs, run_tune

pytestmark = pytest.mark.ray


@pytest.mark.slow
def test_in_a_sweep_one_trial_builds_the_shared_cache_and_the_other_reads_it(tmp_path):
    """Through `python -m flare_ray.tune`: two FLARE trials at once, in two processes. One builds the sweep's
    shared rows before its first step, the other waits for them and reads them by memory map; both read
    every source row back in every epoch, and log their start-up time."""
    run_tune(
        tmp_path,
        "search.space={}",
        "search.num_samples=2",
        "search.max_concurrent_trials=2",
        "search.scheduler=null",
        "training.epochs=2",
    )
    client, _, children = mlflow_runs(tmp_path)
    assert len(children) == 2
    rates = [
        [
            m.value
            for m in sorted(
                client.get_metric_history(c.info.run_id, "train/source_cache_hit_rate"), key=lambda m: m.step
            )
        ]
        for c in children
    ]
    assert rates == [[1.0, 1.0], [1.0, 1.0]], rates  # the rows were there before the first step
    logs = [f.read_text() for f in (tmp_path / "logs").rglob("run_trial_*.log")]
    built = [line for text in logs for line in text.splitlines() if line.startswith("source cache: built")]
    read = [line for text in logs for line in text.splitlines() if line.startswith("source cache: read")]
    assert len(built) == 1 and len(read) == 1, logs  # built once, never twice
    [folder] = (tmp_path / "source_cache").iterdir()
    assert (folder / "complete").is_file() and (folder / "rows.safetensors").stat().st_size > 0
    assert all(c.data.metrics["startup/trial_seconds"] > 0 for c in children)
    assert all("startup/source_cache_seconds" in c.data.metrics for c in children)

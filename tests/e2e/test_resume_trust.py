"""``--resume`` on a real sweep's storage (one finished trial, ``python -m flare_ray.tune``): a ``tuner.pkl``
replaced by a hostile pickle is refused before anything reads it, a changed grid is refused naming the key, both
with exit status 2 and the sweep's MLflow runs left as they were; the state the sweep signed itself resumes."""

from __future__ import annotations

import pickle
import subprocess

import pytest

from tests.helpers import REPO
from tests.sweeps import ONE_TRIAL, environment, mlflow_runs, run_tune, tune_command

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SWEEP = [*ONE_TRIAL, "training.epochs=1"]  # one trial of one epoch


class Payload:
    """Unpickled, it creates ``marker``: what a hostile ``tuner.pkl`` in a shared bucket would do."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished sweep's storage; the key that signed its state in a config dir of the module's own."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("config-home")))
        patch.delenv("FLARE_RAY_STATE_KEY", raising=False)
        storage = tmp_path_factory.mktemp("sweep")
        run_tune(storage, *SWEEP)
        yield storage


def resume(storage, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        tune_command(storage, *SWEEP, *overrides, resume=True),
        env=environment(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def runs(storage) -> list[tuple]:
    """Every run of the sweep as it stands: id, status, end time, metrics."""
    _, parents, children = mlflow_runs(storage)
    return sorted(
        (r.info.run_id, r.info.status, r.info.end_time, sorted(r.data.metrics.items())) for r in parents + children
    )


def test_a_tampered_tuner_pkl_is_refused_on_resume_and_never_runs(finished, tmp_path, fault_summary):
    tuner = finished / "quickstart-jav" / "tuner.pkl"
    original, before = tuner.read_bytes(), runs(finished)
    marker = tmp_path / "payload-ran"
    tuner.write_bytes(pickle.dumps(Payload(marker)))
    try:
        done = resume(finished)
    finally:
        tuner.write_bytes(original)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert f"error: --resume refused: {tuner} is not as this sweep wrote it with this key" in done.stderr
    assert not marker.exists()  # Tune never unpickled it
    assert runs(finished) == before
    fault_summary(
        "a tuner.pkl replaced by a hostile pickle, then --resume",
        failures_injected=1,
        refused="exit 2 before Ray Tune read it",
        payload_ran=marker.exists(),
        mlflow_runs_changed=runs(finished) != before,
    )


def test_a_resume_with_a_changed_grid_is_refused_naming_it_and_leaves_the_finished_runs(finished, fault_summary):
    before = runs(finished)
    done = resume(finished, "search.grid={training.learning_rate: [0.001, 0.002]}")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "search.grid.training.learning_rate: (not set) -> [0.001, 0.002]" in done.stderr
    assert "trials: 1 -> 2" in done.stderr
    _, parents, _ = mlflow_runs(finished)
    assert parents[0].info.status == "FINISHED" and runs(finished) == before  # not flipped to KILLED
    fault_summary(
        "--resume with a changed grid",
        failures_injected=1,
        refused="exit 2 naming search.grid.training.learning_rate",
        parent=parents[0].info.status,
        mlflow_runs_changed=runs(finished) != before,
    )


def test_the_state_the_sweep_signed_resumes(finished):
    done = resume(finished)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "nothing was saved" not in done.stdout
    _, parents, children = mlflow_runs(finished)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 1

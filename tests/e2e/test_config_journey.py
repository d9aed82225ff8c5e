"""One config object from the YAML to the Train workers: validated once per trial.

The trial is a real Ray Train run of the real trial loop (local Ray, tiny XLM-R, vendored NusaX);
the workers report what they received to a file. (Paths resolved once, at load: ``unit/test_config_journey.py``.)
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest

from flare_ray.experiment import apply_sample, load_experiment
from flare_ray.training.inputs import TrialInput
from tests.helpers import QUICKSTART, counted_validations, trial_trainer

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SMALL = ["training.epochs=1", "task.max_records={train: 32, validation: 16, test: 16}", "scaling.cpus_per_worker=1"]


def _reporting_loop(trial_input: TrialInput):
    """The real trial loop, what this worker process received, and how many configs the loop validated."""
    from flare_ray.training.loop import train_loop_per_worker

    experiment = trial_input.experiment
    seen = {
        "type": f"{type(experiment).__module__}.{type(experiment).__qualname__}",
        "storage_path": experiment.storage_path,
        "fusion": experiment.method.flare.fusion,
    }
    with counted_validations() as validations:
        train_loop_per_worker(trial_input)
    seen["validations"] = validations()
    Path(experiment.storage_path, "worker.json").write_text(json.dumps(seen))


def test_the_worker_receives_the_validated_object_validated_once_per_trial(tmp_path, monkeypatch, local_ray):
    monkeypatch.chdir(tmp_path)
    config = load_experiment(QUICKSTART, ["storage_path=relative-store", *SMALL])
    with counted_validations() as validations:
        trial = apply_sample(config, {"method.flare.fusion": "mul"})  # what run_trial does with Tune's sample
        assert validations() == 1  # the trial's one validation
        pickle.loads(pickle.dumps(TrialInput(trial, "jav")))  # how it travels to the workers
        result = trial_trainer(trial, "jav", "journey", loop=_reporting_loop).fit()
        assert validations() == 1  # not by its journey, nor by building and fitting the Train run
    assert result.error is None

    seen = json.loads((tmp_path / "relative-store" / "worker.json").read_text())
    assert seen["type"] == "flare_ray.experiment.config.ExperimentConfig"
    assert seen["validations"] == 0  # never re-validated on the worker
    assert seen["storage_path"] == str(tmp_path / "relative-store") and seen["fusion"] == "mul"
    assert result.metrics["epoch"] == 1 and "validation/macro_f1" in result.metrics  # the real loop ran
    assert Path(result.path).is_relative_to(tmp_path / "relative-store" / "train")

"""The Tune internals a sweep's Ctrl-C relies on, with a real Tune loop: a callback finds the loop's
``TuneController`` up its call stack (``flare_ray.search.concurrent._tune_controller``) and can force a save
of the experiment state through it. Where Ray changes that, this fails loudly instead of Ctrl-C quietly
waiting for Tune's periodic save."""

from __future__ import annotations

import pytest
import ray.tune

pytestmark = pytest.mark.ray


def test_a_callback_finds_its_tune_controller_and_forces_a_save(tmp_path, local_ray):
    from ray.tune.execution.tune_controller import TuneController

    from flare_ray.search.concurrent import _tune_controller

    found, saved = [], []

    class Probe(ray.tune.Callback):
        def on_step_end(self, iteration, trials, **info):
            if not found:
                controller = _tune_controller()
                found.append(controller)
                if controller is not None:
                    assert hasattr(controller, "_storage"), (
                        "TuneController has no _storage: update flare_ray/search/concurrent.py (SearchControl._sign)"
                    )
                    controller.checkpoint(force=True, wait=True)
                    saved.extend(tmp_path.glob("probe/experiment_state-*.json"))

    tuner = ray.tune.Tuner(
        lambda config: ray.tune.report({"x": 1}),
        run_config=ray.tune.RunConfig(name="probe", storage_path=str(tmp_path), callbacks=[Probe()], verbose=0),
    )
    assert not tuner.fit().errors
    assert found and isinstance(found[0], TuneController), (
        "a Tune callback no longer finds its TuneController up the call stack: update "
        "flare_ray/search/concurrent.py (_tune_controller); Ctrl-C would wait for Tune's periodic save"
    )
    assert saved, "TuneController.checkpoint(force=True, wait=True) wrote no experiment state"

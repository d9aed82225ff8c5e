"""Where this project leans on Ray Tune's internals, a change in Ray fails here, loudly, with what to update
(rather than a sweep that quietly behaves differently): the trial creation that ``InOrder`` copies, the
private list of environment variables Tune copies into trials, and the controller the Ctrl-C handler saves
through (its behaviour with a real Tune loop: tests/e2e/test_ray_internals.py)."""

from __future__ import annotations

import hashlib
import inspect

# SHA-256 of Ray 2.60's ``SearchGenerator.create_trial_if_possible``, which ``InOrder`` copies with its own ids.
CREATE_TRIAL_SHA256 = "083c4c4acdd7f2830d1f0ecb1c42ef2497b72ac1160934f553194258f5495091"


def test_the_trial_creation_that_in_order_copies_is_unchanged_in_ray():
    from ray.tune.search import SearchGenerator

    source = inspect.getsource(SearchGenerator.create_trial_if_possible)
    assert hashlib.sha256(source.encode()).hexdigest() == CREATE_TRIAL_SHA256, (
        "Ray changed SearchGenerator.create_trial_if_possible: compare it with InOrder.create_trial_if_possible "
        "in flare_ray/search/searches.py, update InOrder, then CREATE_TRIAL_SHA256 here"
    )


def test_in_order_names_trials_in_creation_order_like_ray_would_create_them():
    from ray.tune.experiment.config_parser import _make_parser
    from ray.tune.search import BasicVariantGenerator  # noqa: F401 - Tune's search package loads
    from ray.tune.search.searcher import Searcher

    from flare_ray.search.searches import InOrder

    class Two(Searcher):
        def __init__(self):
            super().__init__()
            self.n = 0

        def suggest(self, trial_id):
            self.n += 1
            return {"x": self.n} if self.n <= 2 else Searcher.FINISHED

        def on_trial_complete(self, trial_id, result=None, error=False):
            pass

    from ray.tune import register_trainable

    register_trainable("in_order_test", lambda config: None)
    generator = InOrder(Two())
    generator._parser = _make_parser()
    spec = {"run": "in_order_test", "config": {"fixed": 1}}
    trials = [generator.create_trial_if_possible(spec) for _ in range(3)]
    assert trials[2] is None and generator.is_finished()
    ids = [t.trial_id for t in trials[:2]]
    assert ids[0].endswith("_00000") and ids[1].endswith("_00001") and ids[0][:6] == ids[1][:6]
    assert [t.config for t in trials[:2]] == [{"fixed": 1, "x": 1}, {"fixed": 1, "x": 2}]
    assert trials[1].experiment_tag.startswith("2_")


def test_the_list_of_variables_tune_copies_into_trials_is_where_secrets_edits_it():
    try:
        from ray.tune.execution import class_cache
    except ImportError as err:
        raise AssertionError(f"Ray moved ray.tune.execution.class_cache; update flare_ray/secrets.py: {err}") from err
    copied = getattr(class_cache, "ENV_VARS_TO_PROPAGATE", None)
    assert isinstance(copied, set), (
        "Ray moved or changed ray.tune.execution.class_cache.ENV_VARS_TO_PROPAGATE; update "
        "flare_ray/secrets.keep_out_of_runtime_envs"
    )


def test_the_controller_the_ctrl_c_handler_looks_for_is_where_it_looks():
    try:
        from ray.tune.execution.tune_controller import TuneController
    except ImportError as err:
        raise AssertionError(
            f"Ray moved TuneController; update flare_ray/search/concurrent.py (_tune_controller): {err}"
        ) from err
    assert callable(getattr(TuneController, "checkpoint", None)), "TuneController.checkpoint is gone"
    assert {"force", "wait"} <= set(inspect.signature(TuneController.checkpoint).parameters), (
        "TuneController.checkpoint no longer takes force and wait; update flare_ray/search/concurrent.py"
    )

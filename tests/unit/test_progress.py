"""A sweep's progress (``k/N trials``, epochs, ETA, pending counts) and the sums of where its trials' time went:
the arithmetic of flare_ray.search.progress, the console's status table over Tune's own trial objects, and the
trial's clock (flare_ray.training.timing)."""

from __future__ import annotations

import io
import time

import pytest
from ray.tune.experiment import Trial

from flare_ray.experiment import load_experiment
from flare_ray.search.console import Console
from flare_ray.search.plan import plan_searches
from flare_ray.search.progress import (
    Progress,
    SearchPlan,
    TrialState,
    duration,
    makespan,
    search_plan,
    search_progress,
    time_account,
)
from flare_ray.training.timing import PHASES, Clock
from tests.helpers import REPO

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"  # the README's: a grid of 3 cells × 3 seeds


def tune_trial(status: str, epoch: int | None = None, seconds: float = 0.0) -> Trial:
    trial = Trial("trainable", stub=True)
    trial.set_status(status)
    if epoch is not None:
        trial.run_metadata.last_result = {"epoch": epoch, "time_total_s": seconds}
    return trial


def test_the_status_table_counts_the_trials_the_plan_has_not_made_yet_as_pending():
    """The quickstart's 9 trials on 4 slots, 1 done and 4 running: Tune holds 5 trials, the other 4 are pending
    (the table said "1 done, 4 running, 0 pending")."""
    (search,) = plan_searches(load_experiment(QUICKSTART))
    plan = search_plan(search, slots=4)
    assert (plan.trials, plan.epochs, plan.slots, plan.early_stopping) == (9, 27, 4, False)
    stream = io.StringIO()
    console = Console(stream=stream)
    console.update("quickstart-stage1", [tune_trial("TERMINATED", 4, 40.0)])  # stage 1: before the plan
    assert console.status().startswith("progress: 1/1 trials done, 0 running, 0 pending, 0 failed; 1/1 epochs")
    console.plan({search.name: plan})  # from then on, the sweep's searches
    console.update(
        search.name,
        [tune_trial("TERMINATED", 3, 30.0), *(tune_trial("RUNNING", 1, 10.0) for _ in range(4))],
    )
    status = console.status()
    head, table = status.splitlines()[0], status.splitlines()[1:]
    assert head.startswith("progress: 1/9 trials done, 4 running, 4 pending, 0 failed; 7/27 epochs; ")
    # 70 trial-seconds over 7 epochs: 10 s an epoch; 4 running trials with 2 epochs left, then 4 trials of 3 on
    # the 4 slots: 5 epochs of time
    assert head.endswith("elapsed, ETA 50 s")
    row = next(line for line in table if line.startswith(search.name)).split()
    assert row[1:] == ["1/9", "4", "4", "0", "7/27"]

    # a trial's last line says how far the sweep is, counting the trials that gave their final result done (Tune
    # marks them ended later: two in one step of its loop here)
    trials = console._trials[search.name]
    shown = console.callback(search.name, "jav", lambda config: "lora", "validation/macro_f1", 3, str)
    final = {"epoch": 3, "final": True, "best_epoch": 3, "test/macro_f1": 40.0, "time_total_s": 30.0}
    shown.on_trial_result(0, trials, trials[1], final)
    assert (
        stream.getvalue()
        .rstrip()
        .endswith("done: best epoch 3  test/macro_f1 40.00  30 s  [2/9 trials done, ETA 50 s]")
    )
    shown.on_trial_result(0, trials, trials[2], final)
    assert stream.getvalue().rstrip().endswith("[3/9 trials done, ETA 50 s]")
    assert console.status().startswith("progress: 3/9 trials done, 2 running, 4 pending, 0 failed; 11/27 epochs")


def test_a_search_not_started_yet_counts_as_pending_and_asha_makes_the_epochs_an_upper_bound():
    plans = {"a": SearchPlan(4, 12, 2, early_stopping=True), "b": SearchPlan(3, 9, 3)}
    progress = Progress(
        {
            "a": search_progress(plans["a"], [TrialState("RUNNING", 0), TrialState("PENDING")]),
            "b": search_progress(plans["b"], []),  # its Tuner has not started
        }
    )
    line = progress.line(elapsed=75)
    assert line.startswith("progress: 0/7 trials done, 1 running, 6 pending, 0 failed; 0/≤21 epochs; 1 min 15 s")
    assert line.endswith("ETA after the first epoch")
    first = Progress({"a": search_progress(plans["a"], [TrialState("RUNNING", 1, 20.0), TrialState("PENDING")])})
    assert first.line(0).endswith("ETA ≤ 2 min 00 s")  # 20 s an epoch; (2 + 3 + 3 + 3 epochs) on 2 slots: 6


def test_failed_and_stopped_trials_are_finished_work():
    plan = SearchPlan(3, 9, 3, early_stopping=True)
    progress = search_progress(
        plan, [TrialState("TERMINATED", 1, 12.0), TrialState("ERROR", 2, 20.0), TrialState("RUNNING", 2, 18.0)]
    )
    assert (progress.done, progress.failed, progress.running, progress.pending) == (1, 1, 1, 0)
    assert progress.epochs_done == 3 + 3 + 2  # ASHA stopped the first after epoch 1: nothing of it remains
    assert progress.running_left == [1.0] and progress.queued_left == []
    assert Progress({"s": progress}).seconds_per_epoch() == pytest.approx(50.0 / 5)


def test_the_makespan_fills_each_free_slot_with_the_next_trial():
    assert makespan([], [3, 3, 3, 3, 3], slots=4) == 6  # two waves
    assert makespan([1, 2], [3], slots=2) == 4  # the third starts when the first running one ends
    assert makespan([5, 1], [], slots=4) == 5  # the longest running trial
    assert makespan([], [], slots=2) == 0


def test_a_grid_plans_each_cells_epochs_and_a_method_that_trains_nothing_is_one_unit():
    config = load_experiment(
        QUICKSTART,
        ["search.grid={method.kind: [zero_shot, lora], training.epochs: [2, 4]}", "search.seeds=[0, 1]"],
    )
    (search,) = plan_searches(config)
    plan = search_plan(search, slots=None)
    assert plan.trials == search.expected_trials == 4 * 2
    assert plan.epochs == (1 + 1 + 2 + 4) * 2 and plan.slots == 8  # zero_shot: one unit whatever its epochs


def test_the_time_account_sums_the_trials_figures_and_says_what_the_slots_did():
    trial = {"startup": 2.0, "setup": 3.0, "data": 1.0, "train_steps": 10.0, "validation": 2.0, "checkpoint": 1.0}
    results = [
        {**{f"time/{k}": v for k, v in trial.items()}, "time/other": 1.0, "time/wall": 20.0},
        {**{f"time/{k}": v for k, v in trial.items()}, "time/other": 1.0, "time/wall": 20.0},
        {"epoch": 1},  # a trial that never reported its time (an earlier version's, or none)
    ]
    account = time_account(results, slots=2, wall=25.0, before={"stage 1": 30.0})
    assert account.trials == 2 and account.phases["train_steps"] == 20.0 and account.trial_seconds == 40.0
    assert account.idle == 10.0 and account.goodput == 0.5 and account.slot_goodput == 0.4
    metrics = account.metrics()
    assert metrics["time/wall"] == 40.0 and metrics["time/trials"] == 2
    assert metrics["sweep/slot_idle_share"] == 0.2 and metrics["sweep/goodput"] == 0.5
    assert metrics["sweep/stage1_seconds"] == 30.0
    first, second = account.lines()
    assert first.startswith("time: 2 trials, 0.7 trial-min: steps 50 %, setup 15 %, start-up 10 %, validation 10 %")
    assert first.endswith("(stage 1 30 s before the trials)")
    assert (
        second == "slots: 2 × 25 s, idle 20 %; goodput 50 % of the trials' time in optimizer steps (40 % of the slots')"
    )


def test_durations_read_as_people_say_them():
    assert [duration(s) for s in (4.4, 75, 3600 + 125)] == ["4 s", "1 min 15 s", "1 h 02 min"]


def test_the_clock_accounts_for_every_second_of_the_wall_time():
    started = time.time() - 2.0  # the trial started 2 s before its recipe (another process)
    clock = Clock(started)
    with clock.phase("validation"):
        time.sleep(0.01)
    figures = clock.metrics()
    assert set(figures) == {f"time/{p}" for p in (*PHASES, "other", "wall")}
    assert figures["time/startup"] >= 2.0 and figures["time/validation"] >= 0.01
    named = sum(v for k, v in figures.items() if k not in {"time/wall"})
    assert named == pytest.approx(figures["time/wall"])  # other is the rest, never negative
    with pytest.raises(KeyError, match="no phase 'lunch'"):
        clock.add("lunch", 1.0)


def test_a_restarted_run_carries_on_the_time_of_the_attempt_before():
    clock = Clock()
    clock.carry({"time/train_steps": 30.0, "time/startup": 5.0, "time/other": 1.0, "time/wall": 40.0})
    figures = clock.metrics()
    assert figures["time/train_steps"] == 30.0 and figures["time/wall"] >= 40.0
    assert figures["time/other"] == pytest.approx(figures["time/wall"] - 35.0)

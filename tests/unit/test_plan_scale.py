"""Planning scales with the grid (issue 28, item 9), checked by counting, not timing (the times are
benchmarks/plan_scale.py's): no two grid cells are compared, a cell is validated as a whole only where its
sections on their own may not tell, the dry run builds no config per cell, Tune gets the cells one at a time
(in the order of its own grid search), a sweep of more than ``LARGE_SWEEP`` trials says so with its trial
count, and Ctrl-C saves every running search at its next step rather than at Tune's next periodic save."""

from __future__ import annotations

import itertools
import os
import signal
import threading
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from flare_ray.experiment import ExperimentConfig
from flare_ray.experiment.space import PAIR_CHECK_LIMIT, SampleCheck, _cell_problems, search_space_problems
from flare_ray.experiment.training import method_reads
from flare_ray.search.plan import LARGE_SWEEP, dry_run_text, grid_cells, plan_searches, plan_size, run_plan_text
from tests.helpers import counted_validations

BASE: dict[str, Any] = {
    "name": "t",
    "model": {"name_or_path": "tiny:xlm-roberta", "stage1": None},
    "task": {"name": "nusax", "languages": ["jav"]},
    "training": {"epochs": 3},
}


def config_with(search: dict[str, Any], **sections: Any) -> ExperimentConfig:
    return ExperimentConfig.model_validate({**BASE, **sections, "search": search})


def big_grid(last: int) -> dict[str, list[Any]]:
    """10 x 10 x 10 x ``last`` cells over two sections (training, method)."""
    return {
        "training.learning_rate": [1e-4 * (i + 1) for i in range(10)],
        "method.lora.r": [4 * (i + 1) for i in range(10)],
        "training.weight_decay": [0.01 * i for i in range(10)],
        "method.lora.dropout": [i / (2 * last) for i in range(last)],
    }


def pairwise_cells(grid: dict[str, list[Any]], kind: str = "flare") -> list[dict[str, Any]]:
    """The cells as they were planned before: each compared with every cell before it."""
    cells: list[dict[str, Any]] = []
    for values in itertools.product(*grid.values()):
        cell = dict(zip(grid, values))
        cell = {k: v for k, v in cell.items() if method_reads(cell.get("method.kind", kind), k)}
        if cell not in cells:
            cells.append(cell)
    return cells


# -- the cells --------------------------------------------------------------------------------------------
class Counted:
    """A grid value that counts how often it is compared."""

    compared = 0

    def __init__(self, value: int) -> None:
        self.value = value

    def __eq__(self, other: object) -> bool:
        Counted.compared += 1
        return isinstance(other, Counted) and self.value == other.value

    __hash__ = None  # type: ignore[assignment]


def test_the_cells_of_a_grid_are_planned_without_comparing_cells():
    grid = {key: [Counted(i) for i in range(10)] for key in ("training.a", "training.b", "training.c")}
    Counted.compared = 0
    cells = grid_cells(grid)
    assert len(cells) == 1000 and Counted.compared <= len(cells)  # pairwise, it was ~500,000
    assert [tuple(v.value for v in c.values()) for c in cells] == list(itertools.product(range(10), repeat=3))


@pytest.mark.parametrize(
    "grid, kind",
    [
        ({"method.kind": ["lora", "flare"], "method.flare.fusion": ["add", "mul"]}, "flare"),
        ({"method.flare.fusion": ["add", "mul"], "training.learning_rate": [1e-3, 2e-3]}, "lora"),
        (
            {
                "training.learning_rate": [1e-3, 2e-3],
                "method.kind": ["zero_shot", "lora", "flare", "flare_mt"],
                "method.flare.fusion": ["add", "mul"],
                "method.lora.r": [8, 16],
                "method.flare.mt_encoder": ["a", "b"],
            },
            "flare",
        ),
    ],
)
def test_the_cells_are_those_of_the_pairwise_planning_in_its_order(grid, kind):
    assert grid_cells(grid, kind) == pairwise_cells(grid, kind)


# -- checking the grid ------------------------------------------------------------------------------------
def counting(method):
    """``method`` of a class, counting its calls in ``calls``."""

    def counted(self, *args, **kwargs):
        counted.calls += 1
        return method(self, *args, **kwargs)

    counted.calls = 0
    return counted


def test_a_100000_cell_grid_is_checked_and_dry_run_without_a_validation_per_cell():
    grid = big_grid(100)
    config = config_with({"grid": grid, "seeds": [0, 1, 2]})
    whole = counting(SampleCheck.message)
    with mock.patch.object(SampleCheck, "message", whole):
        assert search_space_problems(config) == []
    values = sum(len(v) for v in grid.values())
    assert whole.calls <= values + PAIR_CHECK_LIMIT  # each value and pair; before, also each of the 100,000 cells

    with counted_validations() as validations:
        text = dry_run_text(config)
        plan = run_plan_text(config, {"CPU": 2.0}, Path("logs/sweep.log"))
    assert validations() == 0  # no config per cell
    assert "grid of 100000 cell(s)" in text and "(300000 in all, 1 search(es))" in plan


def test_a_grid_with_a_space_is_dry_run_without_a_config_per_cell():
    grid = big_grid(1)  # 1,000 cells, a TPE search each
    config = config_with({"grid": grid, "space": {"training.warmup_ratio": {"type": "float", "low": 0, "high": 0.2}}})
    with counted_validations() as validations:
        text = dry_run_text(config)
        plan = run_plan_text(config, {"CPU": 2.0}, Path("logs/sweep.log"))
    assert validations() == 0  # before, one per cell (twice for the plan)
    assert "= 8000 trials per language" in text and "(8000 in all, 1000 search(es))" in plan


@pytest.mark.parametrize(
    "search",
    [
        {
            "grid": {"method.kind": ["zero_shot", "lora", "flare"], "method.flare.fusion": ["add", "mul"]},
            "space": {"method.lora.dropout": {"type": "float", "low": 0, "high": 0.2}},  # zero-shot: runs once
            "seeds": [0, 1],
        },
        {"grid": {"method.kind": ["lora", "flare"], "method.flare.fusion": ["add", "mul"]}, "seeds": [1, 2, 3]},
        {"space": {"training.learning_rate": {"type": "float", "low": 1e-4, "high": 1e-3}}, "num_samples": 5},
        {"num_samples": 4, "seeds": [0, 1]},
    ],
    ids=["grid-and-space", "grid", "space", "fixed"],
)
def test_the_size_counted_from_the_cells_is_that_of_the_planned_searches(search):
    config = config_with(search, task={"name": "nusax", "languages": ["jav", "sun"]})
    size, searches = plan_size(config), plan_searches(config)
    assert size.searches * 2 == len(searches) and size.total(2) == sum(s.expected_trials for s in searches)


def one_cell_at_a_time(config: ExperimentConfig) -> list:
    """The first invalid cell as it was found before: every cell validated, in order."""
    check, grid = SampleCheck(config), config.search.grid
    for values in itertools.product(*grid.values()):
        cell = dict(zip(grid, values))
        problem = check.message(cell)
        if problem:
            where = ", ".join(f"{k} = {v!r}" for k, v in cell.items())
            return [(("search", "grid"), f"the cell {where} gives an invalid config: {problem}")]
    return []


HEADS_AND_RANKS = {  # every value and pair is fine; cross_attention with 4 heads and r = 2 is not
    "method.flare.fusion": ["add", "cross_attention"],
    "method.flare.cross_attention_heads": [1, 4],
    "method.lora.r": [8, 2],
}


@pytest.mark.parametrize(
    "grid, scheduler",
    [
        (HEADS_AND_RANKS, None),
        ({"training.learning_rate": [1e-3, 2e-3], **HEADS_AND_RANKS}, None),
        ({"training.epochs": [3, 4], **HEADS_AND_RANKS}, None),  # a key the checks across sections read
        ({"training.epochs": [2, 3], "method.lora.r": [8, 16], "training.learning_rate": [1e-3, 2e-3]}, 3),
        ({"training.epochs": [3, 4], "method.lora.r": [8, 16], "training.learning_rate": [1e-3, 2e-3]}, 3),
    ],
    ids=["sections", "two-sections", "across-and-sections", "across-invalid", "across-valid"],
)
def test_the_cells_checked_by_section_give_the_problem_of_checking_every_cell(grid, scheduler):
    search = {"grid": grid, "scheduler": {"grace_period": scheduler, "with_ablation": True} if scheduler else None}
    config = config_with(search)
    whole = counting(SampleCheck.message)
    with mock.patch.object(SampleCheck, "message", whole):
        found = [(p.path, p.message) for p in _cell_problems(config, SampleCheck(config))]
    assert found == one_cell_at_a_time(config)
    if not found:  # validated as a whole once per value of the key across sections, not once per cell
        assert whole.calls <= len(grid.get("training.epochs", []))


# -- the size warning -------------------------------------------------------------------------------------
def test_a_sweep_of_more_than_large_sweep_trials_is_named_with_its_trial_count():
    grid = {"training.learning_rate": [1e-4 * (i + 1) for i in range(7)], "method.lora.r": list(range(1, 12))}
    grid["training.weight_decay"] = [0.01 * i for i in range(13)]  # 7 x 11 x 13 = 1,001 cells
    large = config_with({"grid": grid})
    assert plan_size(large).trials == 1001 > LARGE_SWEEP
    warning = "warning: 1,001 trials (1,001 cells x 1 seed x 1 language), more than 1,000"
    assert f"# {warning}" in dry_run_text(large)
    assert f"\n  {warning}" in run_plan_text(large, {"CPU": 2.0}, Path("logs/sweep.log"))

    two = config_with({"grid": {**grid, "training.weight_decay": [0.0, 0.1]}, "seeds": [0, 1, 2]})  # 462 trials
    assert "warning" not in dry_run_text(two)
    both = config_with(two.search.model_dump(), task={"name": "nusax", "languages": ["jav", "sun", "ace"]})
    assert "warning: 1,386 trials (154 cells x 3 seeds x 3 languages)" in dry_run_text(both)

    space = {"method.lora.dropout": {"type": "float", "low": 0, "high": 0.2}}  # zero-shot reads no LoRA: once
    mixed = config_with({"grid": {"method.kind": ["zero_shot", "lora"], **grid}, "space": space})
    assert plan_size(mixed).cells == 7 * 13 + 1001  # zero-shot cells differ in no LoRA rank
    warning = "warning: 8,099 trials (1,092 cells x up to 8 configurations x 1 seed x 1 language)"
    assert warning in dry_run_text(mixed)


# -- Tune's grid ------------------------------------------------------------------------------------------
def test_tune_gets_the_cells_one_at_a_time_in_the_order_of_its_grid_search(tmp_path):
    from ray import tune
    from ray.tune.experiment import Experiment
    from ray.tune.search import BasicVariantGenerator, SearchGenerator

    from flare_ray.search.searches import GRID_CELL, GridCells, InOrder

    cells = grid_cells({"method.kind": ["lora", "flare"], "method.flare.fusion": ["add", "mul"]})

    def trials(algorithm, space: dict, num_samples: int, most: int = 100) -> list:
        algorithm.set_search_properties(None, None, space)
        experiment = Experiment("x", lambda c: None, config=space, num_samples=num_samples, storage_path=str(tmp_path))
        algorithm.add_configurations([experiment])
        made = []
        while len(made) < most and (trial := algorithm.next_trial()) is not None:
            made.append(trial)
        return made

    grid_search = {GRID_CELL: tune.grid_search(cells), "training.seed": tune.grid_search([0, 1])}
    expected = [trial.config for trial in trials(BasicVariantGenerator(), grid_search, 1)]
    made = trials(InOrder(GridCells(cells, [0, 1])), {}, 6)
    assert [trial.config for trial in made] == expected and len(expected) == 6
    ids = [trial.trial_id for trial in made]  # in the order made, as Tune's grid search names them
    assert sorted(ids) == ids and len(set(ids)) == 6
    assert [t.config for t in trials(SearchGenerator(GridCells(cells, [0, 1])), {}, 6)] == expected  # Tune's own

    half = InOrder(GridCells(cells, [0, 1]))  # resumed after 3 trials: the ids go on, with the same prefix
    ids = [trial.trial_id for trial in trials(half, {}, 6, most=3)]
    half.save_to_dir(str(tmp_path), "s")
    resumed = InOrder(GridCells(cells, [0, 1]))
    resumed.restore_from_dir(str(tmp_path))
    ids += [trial.trial_id for trial in iter(resumed.next_trial, None)]
    assert sorted(ids) == ids and len(ids) == 6 and len({i.split("_")[0] for i in ids}) == 1

    searcher = GridCells(cells, [0, 1])  # its state is how many it made: a restored one goes on from there
    first = [searcher.suggest(str(i)) for i in range(4)]
    searcher.save(str(tmp_path / "state.pkl"))
    restored = GridCells(cells, [0, 1])
    restored.restore(str(tmp_path / "state.pkl"))
    assert first + [restored.suggest(str(i)) for i in range(3)] == expected + ["FINISHED"]


# -- Ctrl-C -----------------------------------------------------------------------------------------------
def fake_loop(control):
    """A Tune loop that calls ``control`` (a SearchControl) at the end of each step, and saves its state
    (as Tune does: asking every callback for its state) when told to."""
    from ray.tune.execution.tune_controller import TuneController

    class Loop(TuneController):
        def __init__(self) -> None:  # none of Tune's own set-up
            self.saves = self.steps = 0

        def checkpoint(self, force: bool = False, wait: bool = False) -> None:
            self.saves += 1
            control.get_state()

        def step(self) -> None:
            self.steps += 1
            control.on_step_end(iteration=self.steps, trials=[])

    return Loop()


def test_ctrl_c_saves_every_running_search_at_its_next_step(monkeypatch, capsys):
    from flare_ray.search.concurrent import SearchControl, SearchesSaved, run_concurrently

    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "3600")  # Tune's own next save: an hour away
    loops: dict[str, Any] = {}

    def fit(name: str) -> str:
        control = SearchControl(name)
        control.setup()
        loops[name] = loop = fake_loop(control)
        for _ in range(2000):  # steps of ~5 ms: at most 10 s
            loop.step()
            threading.Event().wait(0.005)
        return "not stopped"

    def interrupt() -> None:  # once both searches run their loops
        while len(loops) < 2 or not all(loop.steps for loop in list(loops.values())):
            threading.Event().wait(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt, daemon=True).start()
    with pytest.raises(SearchesSaved):
        run_concurrently(["a", "b"], fit)
    assert all(loop.saves == 1 and loop.steps < 2000 for loop in loops.values())  # saved once, then stopped
    assert "interrupted: saving the state of every search" in capsys.readouterr().err


def test_ctrl_c_twice_stops_without_waiting_for_the_searches():
    from flare_ray.search.concurrent import _INTERRUPT, SearchControl, SearchesSaved, run_concurrently

    started, release = threading.Event(), threading.Event()

    def fit(name: str) -> None:
        SearchControl(name).setup()
        started.set()
        release.wait(60)  # a search stuck in a long step

    def interrupt_twice() -> None:
        started.wait(60)
        os.kill(os.getpid(), signal.SIGINT)
        while not _INTERRUPT.is_set():
            threading.Event().wait(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_twice, daemon=True).start()
    try:
        with pytest.raises(KeyboardInterrupt) as info:
            run_concurrently(["a"], fit)
        assert not isinstance(info.value, SearchesSaved) and not release.is_set()  # the search still runs
    finally:
        release.set()

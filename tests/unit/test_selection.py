"""Selection with seeds: the best configuration has the best mean over its seeds (ties: the lower std), and
its registered trial is its best-validation seed; Ray Tune's Repeater keeps its seed groups across a resume."""

from __future__ import annotations

import json

import pytest
from ray.tune.search import Searcher

from flare_ray.experiment import load_experiment
from flare_ray.search.searches import SeedRepeater, concurrency, plan_searches, seeded
from flare_ray.search.summary import select_best
from tests.helpers import QUICKSTART


def row(trial, configuration, seed, validation, test):
    return {
        "trial_id": trial,
        "configuration": json.dumps(configuration, sort_keys=True),
        "seed": seed,
        "validation": validation,
        "best_epoch": 1,
        "test": {"test/macro_f1": test},
    }


def test_the_best_mean_over_seeds_wins_not_the_best_single_trial():
    rows = [
        row("a0", {"r": 8}, 0, 90.0, 70.0),
        row("a1", {"r": 8}, 1, 40.0, 30.0),  # best single trial, mean 65
        row("b0", {"r": 64}, 0, 70.0, 60.0),
        row("b1", {"r": 64}, 1, 68.0, 50.0),
    ]  # mean 69
    best = select_best(rows, "validation/macro_f1", "max", "jav")
    assert best.hyperparameters == {"r": 64} and best.validation == pytest.approx(69.0)
    assert best.trial_id == "b0" and best.seed == 0 and best.seed_validation == 70.0  # its best-validation seed
    assert best.test == {"test/macro_f1": pytest.approx(55.0)} and best.seeds == [0, 1] and best.trials == 4
    assert best.validation_std == pytest.approx(2**0.5)


def test_ties_go_to_the_lower_standard_deviation_and_min_mode():
    rows = [
        row("a0", {"r": 8}, 0, 0.9, 0),
        row("a1", {"r": 8}, 1, 0.1, 0),
        row("b0", {"r": 64}, 0, 0.5, 0),
        row("b1", {"r": 64}, 1, 0.5, 0),
    ]
    assert select_best(rows, "validation/loss", "min", "jav").hyperparameters == {"r": 64}
    assert select_best(rows, "validation/loss", "max", "jav").hyperparameters == {"r": 64}
    with pytest.raises(RuntimeError, match="no trial of jav reported"):
        select_best([], "validation/loss", "min", "jav")


class _Fixed(Searcher):
    def __init__(self):
        super().__init__(metric="m", mode="max")
        self.n, self.completed = 0, []

    def suggest(self, trial_id):
        self.n += 1
        return {"x": self.n}

    def on_trial_complete(self, trial_id, result=None, error=False):
        self.completed.append((trial_id, result))

    def save(self, path):
        with open(path, "w") as f:
            json.dump({"n": self.n}, f)

    def restore(self, path):
        with open(path) as f:
            self.n = json.load(f)["n"]


def test_seed_repeater_runs_each_configuration_once_per_seed_and_survives_a_resume(tmp_path):
    repeater = SeedRepeater(_Fixed(), repeat=3)
    configs = [repeater.suggest(f"t{i}") for i in range(4)]
    assert [seeded(c, [5, 6, 7]) for c in configs] == [
        {"x": 1, "training.seed": 5},
        {"x": 1, "training.seed": 6},
        {"x": 1, "training.seed": 7},
        {"x": 2, "training.seed": 5},
    ]
    repeater.save(str(tmp_path / "state"))
    resumed = SeedRepeater(_Fixed(), repeat=3)
    resumed.restore(str(tmp_path / "state"))
    for i, score in enumerate([1.0, 2.0, 3.0]):
        resumed.on_trial_complete(f"t{i}", {"m": score})  # known after the resume: no KeyError
    assert resumed.searcher.completed == [("t0", {"m": 2.0})]  # Optuna learns the mean over the seeds
    assert seeded(resumed.suggest("t4"), [5, 6, 7]) == {"x": 2, "training.seed": 6}  # the group goes on


def test_trials_at_once_default_to_the_train_runs_the_cluster_holds_shared_by_the_languages():
    cpu = plan_searches(load_experiment(QUICKSTART, ["search.max_concurrent_trials=null"]))[0]  # 0.5 CPU per worker
    assert concurrency(cpu, {"CPU": 2.0}) == 4 and concurrency(cpu, {"CPU": 2.0}, searches=3) == 1
    gpu = plan_searches(
        load_experiment(
            QUICKSTART,
            [
                "search.max_concurrent_trials=null",
                "scaling.use_gpu=true",
                "scaling.num_workers=2",
                "scaling.cpus_per_worker=4",
            ],
        )
    )[0]
    assert concurrency(gpu, {"CPU": 64.0, "GPU": 8.0}) == 4  # 2 GPUs per trial
    assert concurrency(gpu, {"CPU": 64.0, "GPU": 8.0}, searches=2) == 2
    assert concurrency(gpu, {"CPU": 64.0}) == 1  # no GPU yet (an autoscaling cluster): one at a time, not none
    assert concurrency(plan_searches(load_experiment(QUICKSTART))[0], {"CPU": 64.0}) == 2  # as the YAML says


def test_grid_cells_leave_out_what_their_method_does_not_read():
    from flare_ray.search.plan import grid_cells
    from flare_ray.search.searches import GRID_CELL, tune_config

    grid = {"method.kind": ["lora", "flare"], "method.flare.fusion": ["add", "mul"]}
    assert grid_cells(grid) == [
        {"method.kind": "lora"},
        {"method.kind": "flare", "method.flare.fusion": "add"},
        {"method.kind": "flare", "method.flare.fusion": "mul"},
    ]
    ranks = {
        "method.kind": ["zero_shot", "lora", "flare_mt"],
        "method.lora.r": [8, 16],
        "method.flare.mt_encoder": ["a", "b"],
    }
    cells = grid_cells(ranks)
    assert {"method.kind": "zero_shot"} in cells and len(cells) == 1 + 2 + 2 * 2  # zero-shot trains no LoRA
    assert all("method.flare.mt_encoder" not in c for c in cells if c["method.kind"] == "lora")
    assert len(grid_cells({"method.flare.fusion": ["add", "mul"]}, kind="lora")) == 1  # the method outside the grid

    config = load_experiment(
        QUICKSTART,
        [
            "search.space={}",
            "search.scheduler=null",
            "search.num_samples=null",
            "search.seeds=[0, 1]",
            f"search.grid={grid}",
        ],
    )
    (search,) = plan_searches(config)
    assert search.expected_trials == 3 * 2
    tune, param_space = tune_config(search)
    assert param_space == {} and tune.num_samples == 3 * 2  # every cell once per seed, in Ray Tune's grid order
    made = [tune.search_alg.searcher.suggest(str(i)) for i in range(3 * 2 + 1)]
    assert made == [{GRID_CELL: cell, "training.seed": seed} for seed in (0, 1) for cell in grid_cells(grid)] + [
        "FINISHED"
    ]
    # A trial's Tune config, as key paths again: the cell's values and the seed
    assert seeded({GRID_CELL: {"method.kind": "lora"}, "training.seed": 1}, [0, 1]) == {
        "method.kind": "lora",
        "training.seed": 1,
    }


def test_a_grid_cell_whose_method_reads_no_space_key_runs_once_per_seed():
    config = load_experiment(
        QUICKSTART,
        [
            "search.scheduler=null",
            "search.seeds=[0, 1]",
            "search.num_samples=3",
            "search.grid={method.kind: [lora, flare]}",
        ],
    )  # space: fusion and learning rate
    lora, flare = plan_searches(config)
    assert set(flare.config.search.space) == {"method.flare.fusion", "training.learning_rate"}
    assert set(lora.config.search.space) == {"training.learning_rate"}  # it reads no fusion function
    assert flare.expected_trials == lora.expected_trials == 3 * 2
    only_fusion = load_experiment(
        QUICKSTART,
        [
            "search.scheduler=null",
            "search.seeds=[0, 1]",
            "search.num_samples=3",
            "search.grid={method.kind: [lora, flare]}",
            "search.space={method.flare.fusion: {type: categorical, values: [add, mul]}}",
        ],
    )
    lora, flare = plan_searches(only_fusion)
    assert not lora.config.search.space and lora.expected_trials == 2 and flare.expected_trials == 6


def test_the_console_names_a_trial_by_what_it_varied():
    from flare_ray.search.console import describe

    config = load_experiment(
        QUICKSTART,
        [
            "search.space={}",
            "search.scheduler=null",
            "search.num_samples=null",
            "search.seeds=[0, 1, 2]",
            "search.grid={method.kind: [lora, flare], method.flare.fusion: [add, mul]}",
        ],
    )
    (search,) = plan_searches(config)
    assert describe(search, {"grid_cell": {"method.kind": "lora"}, "training.seed": 2}) == "lora seed=2"
    assert (
        describe(search, {"grid_cell": {"method.kind": "flare", "method.flare.fusion": "mul"}, "training.seed": 0})
        == "flare fusion=mul seed=0"
    )


def test_a_worker_no_node_can_hold_is_found_before_trials_start():
    from flare_ray.search.plan import unplaceable

    gpu = load_experiment(QUICKSTART, ["scaling.use_gpu=true", "scaling.cpus_per_worker=4"])
    cpu_nodes = [{"CPU": 2.0}, {"CPU": 16.0}]
    assert unplaceable(gpu, cpu_nodes) == (
        "a trial's worker asks for 4 CPU, 1 GPU (scaling.cpus_per_worker, "
        "scaling.gpus_per_worker / use_gpu), but the largest of the cluster's "
        "2 node(s) has 16 CPU, 0 GPU"
    )
    assert unplaceable(gpu, [*cpu_nodes, {"CPU": 8.0, "GPU": 1.0}]) is None  # one node holds a whole worker
    assert unplaceable(gpu, [{"CPU": 2.0, "GPU": 8.0}, {"CPU": 16.0}]) is not None  # not split across nodes
    assert unplaceable(load_experiment(QUICKSTART), cpu_nodes) is None


def test_an_autoscaler_that_can_add_a_node_holding_the_worker_makes_the_sweep_wait():
    from flare_ray.search.plan import unplaceable

    gpu = load_experiment(QUICKSTART, ["scaling.use_gpu=true", "scaling.cpus_per_worker=4"])
    head = [{"CPU": 2.0}]
    assert not unplaceable(gpu, head).fits_a_node_type  # a fixed-size cluster: an error
    assert not unplaceable(gpu, head, [{"CPU": 16.0}]).fits_a_node_type  # the autoscaler's nodes have no GPU
    assert unplaceable(gpu, head, [{"CPU": 16.0}, {"CPU": 8.0, "GPU": 1.0}]).fits_a_node_type  # a GPU node type
    assert unplaceable(gpu, head, [{}]).fits_a_node_type  # a launcher-made cluster, node types unknown

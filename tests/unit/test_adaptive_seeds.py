"""Adaptive seeds (``search.seeds: {min, max}``): refused up front where they cannot work, planned as a range of
trials, and decided round by round: a clearly worse cell stops at ``min`` seeds, a cell still undecided against
the best gets the next seed (and the best with it) up to ``max``; each trial says why it ran, the decisions are
written to ``seeds.json``, and the searcher's state survives a save and restore (``--resume``)."""

from __future__ import annotations

import json
import re
import textwrap
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.search import Searcher

from flare_ray.experiment import ExperimentConfigError, load_experiment
from flare_ray.experiment.config import AdaptiveSeeds
from flare_ray.search.plan import dry_run_text, plan_searches
from flare_ray.search.progress import search_plan, search_progress
from flare_ray.search.searches import GRID_CELL, SEED_REASON, describe_trial, seeded
from flare_ray.search.seeding import SEEDS_FILE, AdaptiveCells, SeedCheckpoints, decide
from flare_ray.significance import difference
from flare_ray.tracking.mlflow_runs import SEED_REASON_TAG

BASE = """\
name: adaptive
model: {name_or_path: "tiny:xlm-roberta"}
task: {name: nusax, languages: [jav]}
training: {epochs: 2}
search:
  grid: {method.kind: [lora, flare], method.flare.fusion: [add, add_relu]}
  seeds: {min: 2, max: 5}
"""


def load(tmp_path, *overrides: str, text: str = BASE):
    path = tmp_path / "adaptive.yaml"
    path.write_text(textwrap.dedent(text))
    return load_experiment(path, list(overrides))


def test_adaptive_seeds_are_planned_as_a_range_of_trials(tmp_path):
    config = load(tmp_path)
    spec = config.search
    assert spec.adaptive_seeds == AdaptiveSeeds(min=2, max=5)
    assert spec.seed_list == [0, 1, 2, 3, 4]  # every seed a cell may run with
    assert load(tmp_path, "search.seeds={min: 1, max: 3, start: 7}").search.seed_list == [7, 8, 9]
    assert load(tmp_path, "search.seeds=[3, 4]").search.adaptive_seeds is None  # a list: today's fixed seeds
    text = dry_run_text(config)
    assert "x 2 to 5 seeds per cell (adaptive, seeds 0..4) = 6 to 15 trials per language" in text, text
    (search,) = plan_searches(config)
    assert search.expected_trials == 15  # the most it may run
    plan = search_plan(search, 2)
    assert plan.trials == 15 and plan.trials_bound and plan.early_stopping
    progress = search_progress(plan, [])
    assert progress.trials_bound and progress.bound


@pytest.mark.parametrize(
    ("overrides", "where", "words"),
    [
        (["search.seeds={min: 2, max: 2}"], "search.seeds.max", "list them instead"),
        (["search.seeds={min: 3, max: 2}"], "search.seeds.max", "below min"),
        (["search.seeds={min: 0, max: 2}"], "search.seeds.min", "greater than or equal to 1"),
        (["search.seeds={min: 2, max: 4, step: 1}"], "search.seeds.step", "expected one of ['min', 'max', 'start']"),
        (["search.grid={}"], "search.seeds", "need search.grid or search.ablation"),
        (
            ["search.space={training.learning_rate: {type: categorical, values: [1e-4, 1e-3]}}"],
            "search.seeds",
            "no search.space",
        ),
        (["search.scheduler={type: asha}"], "search.scheduler", "ASHA would stop them early"),
        (["search.metric=validation/loss"], "search.seeds", "no per-example form"),
    ],
)
def test_adaptive_seeds_are_refused_where_they_cannot_work(tmp_path, overrides, where, words):
    with pytest.raises(ExperimentConfigError) as err:
        load(tmp_path, *overrides)
    message = str(err.value)
    problem = message.splitlines()[1]  # [line N, ]<where>[ (from --set ...)]: <why>
    assert "(1 problem)" in message and words in problem, message
    assert re.match(rf"\s*(line \d+, )?{re.escape(where)}( \(from --set [^\n]*\))?: ", problem), problem


def predictions(cell: int, seed: int, n: int = 200) -> pd.DataFrame:
    """A trial's per-example validation predictions: cell 0 right on about 80 % of the examples; cell 1 the same
    but wrong on 5 examples 0 gets right and right on 3 it gets wrong (close: Δ = -1 point); cell 2 right on
    about 20 % (clearly worse)."""
    rng = np.random.default_rng(seed)
    correct = rng.random(n) < (0.2 if cell == 2 else 0.8)
    if cell == 1:
        right, wrong = np.flatnonzero(correct), np.flatnonzero(~correct)
        correct[right[:5]], correct[wrong[:3]] = False, True
    return pd.DataFrame({"id": [f"x{i}" for i in range(n)], "correct": correct})


def score(frame: pd.DataFrame) -> float:
    return 100.0 * frame["correct"].mean()


def test_a_clearly_worse_cell_is_decided_and_a_close_one_gets_the_next_seed_with_the_best():
    cells = [[predictions(cell, seed) for seed in (0, 1)] for cell in range(3)]
    scores = [[score(f) for f in cell] for cell in cells]
    decision = decide(cells, scores, [2, 2, 2], maximum=5, metric="accuracy", names=["best", "close", "worse"])
    assert decision.best == 0
    close, worse = decision.differences[1], decision.differences[2]
    assert close == difference(cells[1], cells[0], "accuracy")  # the paired bootstrap, seeds pooled
    assert close.low <= 0 <= close.high and worse.high < 0  # undecided, decided
    assert set(decision.given) == {0, 1}  # the worse cell gets no more seeds
    assert decision.given[1].startswith("undecided against the best cell (best): Δ ")
    assert decision.given[1].endswith("after 2 seeds")
    assert decision.given[0] == "the best cell: 1 cell undecided against it"
    # a cell at max gets no more, the best included; nothing undecided: nobody gets a seed
    assert set(decide(cells, scores, [5, 3, 2], maximum=5, metric="accuracy").given) == {1}
    assert decide(cells, scores, [2, 5, 2], maximum=5, metric="accuracy").given.keys() == {0}
    decided = decide([cells[0], cells[2]], [scores[0], scores[2]], [2, 2], maximum=5, metric="accuracy")
    assert decided.given == {}


def write_predictions(tmp_path, trial: str, frame: pd.DataFrame) -> str:
    folder = tmp_path / "checkpoints" / trial
    (folder / "predictions").mkdir(parents=True)
    frame.to_parquet(folder / "predictions" / "validation.parquet", index=False)
    return str(folder)


CELLS = [{"method.flare.fusion": "add"}, {"method.flare.fusion": "mul"}, {"method.flare.fusion": "cat"}]


def searcher(tmp_path) -> AdaptiveCells:
    return AdaptiveCells(
        CELLS, AdaptiveSeeds(min=2, max=3), "validation/accuracy", folder=str(tmp_path), storage_path=str(tmp_path)
    )


def finish(tmp_path, cells: AdaptiveCells, trial: str, config: dict, via_callback: bool = False) -> None:
    """A trial's results as Tune hands them over: each epoch's score, its checkpoint, its end."""
    index = CELLS.index(config[GRID_CELL])
    frame = predictions(index, config["training.seed"])  # the best, a close cell, a clearly worse one
    path = write_predictions(tmp_path, trial, frame)
    cells.on_trial_result(trial, {"validation/accuracy": score(frame) - 5.0})
    if via_callback:  # a trial in its own process: Tune tells callbacks of its checkpoints
        SeedCheckpoints(cells).on_checkpoint(0, [], SimpleNamespace(trial_id=trial), SimpleNamespace(path=path))
        cells.on_trial_result(trial, {"validation/accuracy": score(frame)})
    else:  # a Ray Train run: its checkpoint's path comes with its result
        cells.on_trial_result(trial, {"validation/accuracy": score(frame), CHECKPOINT_PATH_KEY: path})
    cells.on_trial_complete(trial, {"validation/accuracy": score(frame) - 1.0, "final": True})


def test_the_searcher_gives_seeds_round_by_round_and_saves_its_state(tmp_path):
    cells = searcher(tmp_path)
    first = [cells.suggest(f"t{i}") for i in range(6)]
    assert [(CELLS.index(c[GRID_CELL]), c["training.seed"]) for c in first] == [
        (0, 0),
        (1, 0),
        (2, 0),
        (0, 1),
        (1, 1),
        (2, 1),
    ]  # every cell with the first seed, then with the next (as GridCells)
    assert first[0][SEED_REASON] == "seed 1 of the first 2 (search.seeds.min)"
    assert first[5][SEED_REASON] == "seed 2 of the first 2 (search.seeds.min)"
    assert cells.suggest("t6") is None  # the round's trials still run
    for i, config in enumerate(first[:5]):
        finish(tmp_path, cells, f"t{i}", config, via_callback=i % 2 == 0)
    assert cells.suggest("t6") is None  # one still runs

    saved = tmp_path / "state.json"
    cells.save(str(saved))
    restored = searcher(tmp_path)
    restored.restore(str(saved))
    assert restored.get_state() == json.loads(json.dumps(cells.get_state()))

    for each in (cells, restored):  # the same decisions after a restore
        finish(tmp_path / each.__class__.__name__ / str(id(each)), each, "t5", first[5])
        second = [each.suggest("t6"), each.suggest("t7")]
        assert [(CELLS.index(c[GRID_CELL]), c["training.seed"]) for c in second] == [(0, 2), (1, 2)]
        assert second[0][SEED_REASON] == "the best cell: 1 cell undecided against it"
        assert second[1][SEED_REASON].startswith("undecided against the best cell (fusion=add): Δ ")
        assert each.suggest("t8") is None
    for i, config in zip((6, 7), second):
        finish(tmp_path, cells, f"t{i}", config)
    assert cells.suggest("t8") == Searcher.FINISHED  # both at max: the search ends
    assert cells.suggest("t9") == Searcher.FINISHED
    assert [cells.runs(c) for c in range(3)] == [3, 3, 2]

    record = json.loads((tmp_path / SEEDS_FILE).read_text())
    assert record["finished"] and len(record["rounds"]) == 2
    first_round = record["rounds"][0]
    assert first_round["best"] == "fusion=add"
    worse = first_round["cells"][2]
    assert worse["seeds"] == 2 and worse["next_seed"] is None and worse["high"] < 0
    assert record["trials"]["t2"]["reason"] == "seed 1 of the first 2 (search.seeds.min)"
    assert record["rounds"][1]["cells"][0]["next_seed"] is None  # at max


def test_a_trial_says_why_it_ran_on_its_run_and_nowhere_in_its_config(tmp_path):
    config = load(tmp_path)
    sample = {GRID_CELL: {"method.kind": "lora"}, "training.seed": 3, SEED_REASON: "the best cell: 2 cells ..."}
    assert SEED_REASON not in seeded(sample, config.search.seed_list)
    data, tags = describe_trial(
        sample, base=config.model_dump(mode="json"), cell={}, grid=config.search.cell_keys, seeds=[]
    )
    assert tags[SEED_REASON_TAG] == "the best cell: 2 cells ..." and data["training"]["seed"] == 3
    assert SEED_REASON not in json.dumps(data)


def test_an_adaptive_search_that_ended_early_is_finished_not_interrupted(tmp_path):
    from flare_ray.search.searches import search_path
    from flare_ray.search.sweep import SweepInterrupted, _finished

    config = load(tmp_path, f"storage_path={tmp_path / 'sweep'}")
    (search,) = plan_searches(config)
    grid = SimpleNamespace(num_terminated=7, num_errors=1)  # 8 of at most 15 trials
    with pytest.raises(SweepInterrupted, match="stopped after 8 of 15 trials"):
        _finished(grid, search)  # no decision that it ended: interrupted
    folder = tmp_path / "sweep" / search.name
    folder.mkdir(parents=True)
    (folder / SEEDS_FILE).write_text(json.dumps({"finished": False}))
    with pytest.raises(SweepInterrupted):
        _finished(grid, search)
    (folder / SEEDS_FILE).write_text(json.dumps({"finished": True}))
    assert search_path(search) == str(folder) and _finished(grid, search) is grid


def test_cells_are_named_in_a_few_words_in_the_reasons():
    from flare_ray.experiment.config import AblationSpec
    from flare_ray.search.seeding import cell_name

    ablation = AblationSpec(baseline={"training.learning_rate": 0.02}, vary={"training.learning_rate": [0.05]})
    assert cell_name({"training.learning_rate": 0.05}, ablation) == "learning_rate=0.05"
    assert cell_name({"training.learning_rate": 0.02, "method.lora.r": 8}, ablation) == "baseline r=8"
    assert cell_name({"method.kind": "flare", "method.flare.fusion": "add"}) == "kind=flare fusion=add"

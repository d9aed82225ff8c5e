"""Ablation arms (``search.ablation``): the baseline and one arm per listed value, each the baseline with that key
alone changed, planned from a YAML (the baseline first; with a grid, every arm in every cell), refused up front with
one error naming the file and key, listed by the dry run with the trial count, each trial tagged with its arm, and
reported with the arms as rows, the baseline first, each with its Δ against the baseline."""

from __future__ import annotations

import json
import shlex
import textwrap

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from flare_ray.cli.tune import main as tune
from flare_ray.experiment import ExperimentConfigError, load_experiment
from flare_ray.search.plan import plan_searches, plan_size, search_cells
from flare_ray.search.searches import GridCells, describe_trial, tune_config
from flare_ray.tracking import mlflow_runs
from tests.helpers import REPO

BASE = """\
name: arms
model: {name_or_path: "tiny:xlm-roberta"}
task: {name: nusax, languages: [jav, sun]}
training: {epochs: 2}
search:
  seeds: [0, 1]
"""
ABLATION = """\
  ablation:
    baseline: {method.flare.fusion: add_relu, method.lora.r: 8}
    vary:
      method.flare.fusion: [add, mul, add_relu]   # add_relu is the baseline's: no arm of its own
      method.lora.r: [16]
"""
BASELINE = {"method.flare.fusion": "add_relu", "method.lora.r": 8}


def write(tmp_path, text: str, name: str = "arms.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(tmp_path, extra: str = "", *overrides: str):
    return load_experiment(write(tmp_path, BASE + ABLATION + extra), list(overrides))


def test_arms_are_the_baseline_then_one_per_value_each_changing_one_key(tmp_path):
    config = load(tmp_path)
    cells = search_cells(config)
    assert cells == [
        BASELINE,
        {**BASELINE, "method.flare.fusion": "add"},
        {**BASELINE, "method.flare.fusion": "mul"},
        {**BASELINE, "method.lora.r": 16},
    ]  # 1 + 3 arms: add_relu, listed in vary, is the baseline
    for cell in cells[1:]:
        assert len([k for k in BASELINE if cell[k] != BASELINE[k]]) == 1
    assert [name for name, _ in config.search.ablation.arms()] == [
        "baseline",
        "method.flare.fusion=add",
        "method.flare.fusion=mul",
        "method.lora.r=16",
    ]
    # (1 + 3 arms) x 2 seeds per language, x 2 languages; one search per language (Ray Tune's grid)
    searches = plan_searches(config)
    assert [s.language for s in searches] == ["jav", "sun"] and {s.expected_trials for s in searches} == {8}
    assert plan_size(config).total(len(config.task.languages)) == 16
    assert config.search.num_samples == 1 and config.report.baseline == "baseline"  # the report's Δ: vs the baseline


def test_a_key_of_vary_the_baseline_leaves_out_keeps_the_configs_value(tmp_path):
    config = load_experiment(
        write(
            tmp_path,
            BASE + "  ablation:\n    vary: {method.lora.r: [4, 16]}\nmethod: {lora: {r: 16}}\n",
        )
    )
    assert config.search.ablation.baseline == {"method.lora.r": 16}
    assert search_cells(config) == [{"method.lora.r": 16}, {"method.lora.r": 4}]  # 16 is the baseline


def test_set_names_a_key_of_the_baseline_or_of_vary_by_its_dotted_path(tmp_path):
    config = load(
        tmp_path, "", "search.ablation.vary.method.lora.r=[4, 32]", "search.ablation.baseline.method.flare.fusion=mul"
    )
    assert config.search.ablation.vary["method.lora.r"] == [4, 32]
    assert config.search.ablation.baseline == {"method.flare.fusion": "mul", "method.lora.r": 8}
    assert len(search_cells(config)) == 1 + 2 + 2  # add, add_relu (mul is the baseline's); r 4, 32


def test_an_ablation_with_a_grid_runs_every_arm_in_every_cell(tmp_path):
    config = load(tmp_path, "  grid: {training.learning_rate: [0.001, 0.01]}\n")
    cells = search_cells(config)
    assert len(cells) == 4 * 2 and cells[:2] == [
        {**BASELINE, "training.learning_rate": 0.001},
        {**BASELINE, "training.learning_rate": 0.01},
    ]  # the baseline's cells first
    assert {json.dumps(c, sort_keys=True) for c in cells} == {
        json.dumps({**arm, "training.learning_rate": lr}, sort_keys=True)
        for _, arm in config.search.ablation.arms()
        for lr in (0.001, 0.01)
    }
    assert config.report.baseline == "baseline"  # a baseline row per cell: each arm's Δ against its cell's
    # A method that reads no fusion: its arms that differ only in the fusion are one cell (as in a grid)
    lora = search_cells(load(tmp_path, "  grid: {method.kind: [flare, lora]}\n"))
    assert len(lora) == 4 + 2 and {"method.kind": "lora", "method.lora.r": 8} in lora
    assert plan_searches(load(tmp_path, "  grid: {method.kind: [flare, lora]}\n"))[0].expected_trials == 6 * 2


def test_an_ablation_with_a_space_is_a_search_per_arm(tmp_path):
    space = "  num_samples: 2\n  space: {training.learning_rate: {type: float, low: 0.001, high: 0.01}}\n"
    searches = plan_searches(load(tmp_path, space))
    assert len(searches) == 4 * 2 and {s.expected_trials for s in searches} == {2 * 2}
    assert [s.name for s in searches[:4]] == [
        "arms-jav-cell0-baseline",
        "arms-jav-cell1-fusion=add",
        "arms-jav-cell2-fusion=mul",
        "arms-jav-cell3-r=16",
    ]
    assert searches[3].config.method.lora.r == 16 and searches[3].config.method.flare.fusion == "add_relu"


BAD = {
    "a key that is no config key": (
        ["search.ablation.vary={method.flare.nope: [1]}"],
        "search.ablation.vary.method.flare.nope[0]",
        "unknown key 'nope'",
    ),
    "a value not valid for its key": (
        ["search.ablation.vary={method.flare.fusion: [sum]}"],
        "search.ablation.vary.method.flare.fusion[0]",
        "unknown fusion function 'sum'",
    ),
    "a baseline value not valid for its key": (
        ["search.ablation.baseline={method.lora.r: 0}"],
        "search.ablation.baseline",
        "method.lora.r: Input should be greater than or equal to 1",
    ),
    "a key both in the grid and the ablation": (
        ["search.grid={method.lora.r: [4]}"],
        "search.ablation.baseline.method.lora.r",
        "is also in search.grid",
    ),
    "a key both sampled and ablated": (
        ["search.space={method.lora.r: {type: categorical, values: [4]}}"],
        "search.ablation.baseline.method.lora.r",
        "is also in search.space",
    ),
    "a key fixed for a whole search": (
        ["search.ablation.vary={task.name: [xnli]}"],
        "search.ablation.vary.task.name",
        "'task.name' cannot be ablated",
    ),
    "a key the baseline's method does not read": (
        ["method.kind=lora", "search.ablation.baseline={}", "search.ablation.vary={method.flare.fusion: [add]}"],
        "search.ablation.vary.method.flare.fusion",
        "the baseline's method ('lora') does not read method.flare.fusion",
    ),
    "no arm besides the baseline": (
        ["search.ablation.vary={method.flare.fusion: [add_relu]}"],
        "search.ablation.vary",
        "expected at least one arm",
    ),
    "an arm invalid in a cell of the grid": (
        [
            "search.grid={method.flare.cross_attention_heads: [3]}",
            "search.ablation.vary={method.flare.fusion: [cross_attention]}",
        ],
        "search.ablation",
        "the arm method.flare.fusion=cross_attention in the grid's cell method.flare.cross_attention_heads = 3",
    ),
    "ASHA with an ablation (and no seeds)": (
        ["search.scheduler={type: asha}", "search.seeds=null"],
        "search.scheduler",
        "biases a grid or seed ablation",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_ablation_is_one_error_naming_the_file_and_key(tmp_path, case):
    overrides, where, what = BAD[case]
    with pytest.raises(ExperimentConfigError) as err:
        load(tmp_path, "", *overrides)
    message = str(err.value)
    assert message.startswith(str(tmp_path / "arms.yaml")) and "(1 problem)" in message, message
    assert f"  {where}" in message or f", {where}" in message, message
    assert what in message, message


def test_the_dry_run_lists_the_arms_and_the_trials(tmp_path, capsys):
    assert tune([str(write(tmp_path, BASE + ABLATION)), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert (
        "# search: ablation of 4 arms (the baseline + 3) x 2 seeds [0, 1] = 8 trials per language x 2 language(s)"
        in out
    )
    lines = [line for line in out.splitlines() if line.startswith(("#   baseline:", "#   arm:"))]
    assert lines == [
        "#   baseline: method.flare.fusion=add_relu, method.lora.r=8",
        "#   arm: method.flare.fusion=add (vs baseline)",
        "#   arm: method.flare.fusion=mul (vs baseline)",
        "#   arm: method.lora.r=16 (vs baseline)",
    ]


def test_each_trial_runs_its_arm_and_is_tagged_with_it(tmp_path):
    config = load(tmp_path)
    (search, _) = plan_searches(config)
    tune_cfg, _ = tune_config(search)
    searcher = tune_cfg.search_alg.searcher
    assert isinstance(searcher, GridCells)
    base = config.model_dump(mode="json")
    seen = []
    for i in range(search.expected_trials):
        sample = searcher.suggest(f"t{i}")
        data, tags = describe_trial(
            sample,
            base=base,
            cell=search.cell,
            grid=config.search.cell_keys,
            seeds=config.search.seed_list,
            ablation=search.ablation,
        )
        seen.append((tags[mlflow_runs.ARM_TAG], tags[mlflow_runs.SEED_TAG]))
        assert (data["method"]["flare"]["fusion"], data["method"]["lora"]["r"]) == tuple(
            json.loads(tags[mlflow_runs.CELL_TAG])[k] for k in BASELINE
        )
    arms = ["baseline", "method.flare.fusion=add", "method.flare.fusion=mul", "method.lora.r=16"]
    assert seen == [(arm, seed) for seed in ("0", "1") for arm in arms]  # every arm with the first seed, then the next
    assert searcher.suggest("done") == GridCells.FINISHED


def test_the_console_and_run_names_say_which_arm_a_trial_is(tmp_path):
    from flare_ray.search.console import describe

    (search, _) = plan_searches(load(tmp_path))
    searcher = tune_config(search)[0].search_alg.searcher
    names = [describe(search, searcher.suggest(f"t{i}")) for i in range(4)]
    assert names == ["baseline seed=0", "fusion=add seed=0", "fusion=mul seed=0", "r=16 seed=0"]
    # with a grid: the arm, then the cell's grid values
    (search, _) = plan_searches(load(tmp_path, "  grid: {training.learning_rate: [0.001, 0.01]}\n"))
    searcher = tune_config(search)[0].search_alg.searcher
    names = [describe(search, searcher.suggest(f"t{i}")) for i in range(4)]
    assert names == [
        "baseline learning_rate=0.001 seed=0",
        "baseline learning_rate=0.01 seed=0",
        "fusion=add learning_rate=0.001 seed=0",
        "fusion=add learning_rate=0.01 seed=0",
    ]


LABELS = ["negative", "neutral", "positive"]
RIGHT = {"baseline": 0.6, "method.flare.fusion=add": 0.85, "method.flare.fusion=mul": 0.6, "method.lora.r=16": 0.3}


def log_sweep(tmp_path, config, right) -> str:
    """A sweep's records as the sweep logs them (its config, each trial's tags from describe_trial), the
    baseline's trials logged last; ``right(tags, cell)``: the share of test examples a trial gets right. The
    tracking URI."""
    search = plan_searches(config)[0]
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("arms")
    parent = client.create_run(experiment, tags={mlflow_runs.SWEEP_TAG: "arms"}).info.run_id
    (tmp_path / "config.json").write_text(json.dumps(config.model_dump(mode="json")))
    client.log_artifact(parent, str(tmp_path / "config.json"))
    gold = [LABELS[i % 3] for i in range(150)]
    searcher = GridCells(search_cells(config), config.search.seeds)
    samples = [searcher.suggest(str(i)) for i in range(search.expected_trials)]
    trials = [(language, sample) for language in config.task.languages for sample in reversed(samples)]
    for i, (language, sample) in enumerate(trials):  # the baseline's trials last
        _, tags = describe_trial(
            sample,
            base=config.model_dump(mode="json"),
            cell={},
            grid=config.search.cell_keys,
            seeds=config.search.seed_list,
            ablation=search.ablation,
        )
        tags = {
            **tags,
            MLFLOW_PARENT_RUN_ID: parent,
            mlflow_runs.TRIAL_TAG: f"t{i:04d}",
            mlflow_runs.LANGUAGE_TAG: language,
        }
        run = client.create_run(experiment, tags=tags).info.run_id
        correct = np.random.default_rng(i).random(150) < right(tags, json.loads(tags[mlflow_runs.CELL_TAG]))
        frame = pd.DataFrame({"id": [f"e{k}" for k in range(150)], "gold": gold})
        frame["prediction"] = [g if r else LABELS[(LABELS.index(g) + 1) % 3] for g, r in zip(gold, correct)]
        frame["correct"] = (frame["gold"] == frame["prediction"]).astype(float)
        (tmp_path / run).mkdir()
        frame.to_parquet(tmp_path / run / "test.parquet")
        client.log_artifact(run, str(tmp_path / run / "test.parquet"), mlflow_runs.PREDICTIONS_PATH)
        client.log_metric(run, "validation/macro_f1", 50.0 + i, step=1)
        client.log_metric(run, "test/macro_f1", 100 * correct.mean())
        client.set_terminated(run)
    client.set_terminated(parent)
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_the_report_rows_are_the_arms_baseline_first_each_with_its_delta(tmp_path, capsys):
    """The report's rows are the arms, named by what each changes, the baseline first, every other arm with its
    Δ against the baseline and the interval."""
    from flare_ray.cli.report import main as report

    config = load(tmp_path, "", "task.languages=[jav]")
    uri = log_sweep(tmp_path, config, lambda tags, cell: RIGHT[tags[mlflow_runs.ARM_TAG]])
    out = tmp_path / "report"
    assert report(["arms", "--tracking-uri", uri, "--output", str(out), "--resamples", "200"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(out / "report.csv")
    jav = table[table["column"] == "jav"]
    assert list(jav["row"]) == ["baseline", "fusion=add", "fusion=mul", "r=16"]
    assert set(jav["baseline"]) == {"baseline"} and np.isnan(jav["delta"].iloc[0])
    add, r16 = jav.iloc[1], jav.iloc[3]
    assert add["delta"] > 0 and add["delta_low"] > 0 and r16["delta"] < 0 and r16["delta_high"] < 0
    assert "| jav Δ vs baseline [95% CI]" in printed


def test_with_a_grid_each_arm_is_compared_with_the_baseline_of_its_own_cell(tmp_path):
    """An ablation in every cell of a grid (Table 3's shape): the baseline arm is a row per cell, and each arm's Δ
    is against the baseline of its own cell: at learning rate 0.01 every arm gets 25 points more right, so
    comparing across cells would show it; within its cell ``fusion=mul`` is the baseline's equal."""
    from flare_ray.report import build_report

    config = load(tmp_path, "  grid: {training.learning_rate: [0.001, 0.01]}\n")  # jav and sun
    assert config.report.baseline == "baseline"

    def right(tags, cell):
        return RIGHT[tags[mlflow_runs.ARM_TAG]] + (0.25 if cell["training.learning_rate"] == 0.01 else 0.0)

    uri = log_sweep(tmp_path, config, right)
    report = build_report(MlflowClient(uri), ["arms"], tmp_path / "report", resamples=200)
    jav = report.table[report.table["column"] == "jav"].set_index("row")
    assert set(list(jav.index)[:2]) == {"baseline, learning_rate=0.001", "baseline, learning_rate=0.01"}
    for row, line in jav.iterrows():
        lr = row.rsplit("=", 1)[-1]
        assert line["baseline"] == f"baseline, learning_rate={lr}"
        if row.startswith("baseline"):
            assert np.isnan(line["delta"])
    high, low = jav.loc["fusion=add, learning_rate=0.01"], jav.loc["fusion=mul, learning_rate=0.001"]
    assert high["delta_low"] > 0 and low["delta_low"] < 0 < low["delta_high"]  # not +25 points from another cell
    assert jav.loc["r=16, learning_rate=0.01", "delta_high"] < 0
    averages = report.table[report.table["column"] == "average"].set_index("row")
    assert averages.loc["fusion=add, learning_rate=0.001", "baseline"] == "baseline, learning_rate=0.001"
    assert averages.loc["fusion=add, learning_rate=0.01", "delta_low"] > 0  # stratified over jav and sun
    assert (
        averages.loc["fusion=mul, learning_rate=0.01", "delta_low"]
        < 0
        < averages.loc["fusion=mul, learning_rate=0.01", "delta_high"]
    )
    print(report.markdown)


def test_the_shipped_ablation_yaml_and_its_toy_command(tmp_path):
    path = REPO / "search_spaces" / "ablation-fusion.yaml"
    config = load_experiment(path)
    assert config.search.ablation.baseline == {"method.flare.fusion": "add_relu"}  # FLARE as in Table 1
    assert [cell["method.flare.fusion"] for cell in search_cells(config)] == [
        "add_relu",
        "add",
        "mul",
        "cross_attention",
    ]
    assert config.report.baseline == "baseline" and config.search.seeds == [0, 1, 2, 3, 4]
    words = shlex.split(
        " ".join(
            line.removeprefix("#").strip().removesuffix("\\")
            for line in path.read_text().partition("Offline at toy scale")[2].split("\nname:")[0].splitlines()[1:]
        )
    )
    overrides = [words[i + 1] for i, word in enumerate(words[:-1]) if word == "--set"]
    toy = load_experiment(path, overrides)
    assert toy.model.name_or_path == "tiny:xlm-roberta" and plan_size(toy).total(len(toy.task.languages)) == 4 * 2

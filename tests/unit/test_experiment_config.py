"""Experiment YAMLs: shipped files validate, bad ones fail before Ray with the file, key path and
expectation in one message; overrides; the Optuna define-by-run space (no Ray, no models)."""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from flare_ray.experiment import (
    DefineByRun,
    ExperimentConfig,
    ExperimentConfigError,
    apply_sample,
    build_sampler,
    load_experiment,
    validate_experiment,
)
from flare_ray.search.plan import dry_run_text, plan_searches
from flare_ray.tracking.mlflow_runs import resolve_tracking_uri
from tests.helpers import QUICKSTART, REPO

SEARCH_SPACES = REPO / "search_spaces"
SHIPPED = sorted(SEARCH_SPACES.rglob("*.yaml"))

BASE = """\
name: t
model: {name_or_path: "tiny:xlm-roberta"}
task: {name: nusax, languages: [jav]}
training: {epochs: 2}
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(path: Path, overrides=()) -> str:
    with pytest.raises(ExperimentConfigError) as info:
        load_experiment(path, overrides)
    return str(info.value)


# -- shipped files ---------------------------------------------------------------------------------
def test_every_shipped_search_space_validates():
    names = {p.stem for p in SHIPPED}
    assert {"quickstart", "rank", "fusion", "layers", "lr", "full"} <= names
    for path in SHIPPED:
        config = load_experiment(path)
        assert config.search.space or config.search.grid or config.search.ablation, path
        assert config.search.metric.startswith("validation/")
        assert path.read_text().startswith("#"), f"{path.name}: header comment missing"
        assert "ray job submit" in path.read_text() or path.stem == "quickstart"


def test_quickstart_is_the_papers_recipe_on_a_tiny_offline_model():
    c = load_experiment(SEARCH_SPACES / "quickstart.yaml")
    assert c.model.name_or_path == "tiny:xlm-roberta" and c.model.tiny_architecture == "xlm-roberta"
    assert c.model.stage1 == "auto" and "word_embeddings" in c.stage1.lora.target_modules  # stage 1 on English
    assert (c.task.name, c.task.languages) == ("nusax", ["jav"])
    assert c.search.grid == {"method.kind": ["lora", "flare"], "method.flare.fusion": ["add", "add_relu"]}
    assert c.search.seeds == [0, 1, 2] and c.search.scheduler is None and not c.search.space
    assert c.scaling.num_workers == 1 and not c.scaling.use_gpu and c.scaling.in_trial_process
    assert c.search.metric == "validation/macro_f1" and c.tracking.experiment_name == "quickstart"
    (search,) = plan_searches(c)
    assert search.expected_trials == 9  # LoRA reads no fusion function: 3 cells x 3 seeds


def test_rank_file_sets_alpha_to_twice_r():
    c = load_experiment(SEARCH_SPACES / "rank.yaml")
    assert c.search.grid["method.lora.r"] == [8, 64, 128]
    for r in c.search.grid["method.lora.r"]:
        assert apply_sample(c, {"method.lora.r": r}).method.lora.lora_alpha == 2 * r


GRID = BASE + "search:\n  grid: {method.flare.fusion: [add, mul], method.lora.r: [4, 8]}\n"


def test_grid_and_seeds_are_read_and_planned():
    from flare_ray.search.plan import dry_run_text
    from flare_ray.search.searches import plan_searches

    c = validate_experiment(yaml.safe_load(GRID + "  seeds: [0, 1]\n"), "grid.yaml")
    (search,) = plan_searches(c)  # a grid without a space is one search (Ray's grid) per language
    assert (
        search.expected_trials == 8
        and "grid of 4 cell(s)" in dry_run_text(c)
        and "= 8 trials per language" in dry_run_text(c)
    )
    tpe = (
        GRID
        + "  space: {training.learning_rate: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}}\n  num_samples: 3\n"
    )
    c = validate_experiment(yaml.safe_load(tpe + "  seeds: [0, 1]\n"), "grid-tpe.yaml")
    searches = plan_searches(c)  # a grid with a space: a TPE search per cell, each configuration with both seeds
    assert len(searches) == 4 and {s.expected_trials for s in searches} == {6}
    assert searches[1].cell == {"method.flare.fusion": "add", "method.lora.r": 8}
    assert searches[1].config.method.lora.r == 8 and searches[1].config.method.flare.fusion == "add"


# -- malformed files: one error naming the file, the key path and the expectation -------------------
BAD = {
    "ASHA with a grid": (
        GRID + "  scheduler: {type: asha}\n",
        "search.scheduler",
        "biases a grid or seed ablation",
    ),
    "a grid value that is no valid config": (
        BASE + "search:\n  grid: {method.kind: [lora, nope]}\n",
        "search.grid.method.kind[1]",
        "'nope' gives an invalid config",
    ),
    "a key both gridded and sampled": (
        GRID + "  space: {method.lora.r: {type: categorical, values: [4]}}\n",
        "search.grid.method.lora.r",
        "either gridded or sampled",
    ),
    "seeds and a gridded seed": (
        BASE + "search:\n  grid: {training.seed: [1, 2]}\n  seeds: [0]\n",
        "search.grid.training.seed",
        "search.seeds sets training.seed",
    ),
    "repeats of a grid": (GRID + "  num_samples: 3\n", "search.num_samples", "use search.seeds to repeat"),
    "a fixed key in the grid": (
        BASE + "search:\n  grid: {task.languages: [[jav], [sun]]}\n",
        "search.grid.task.languages",
        "cannot be searched",
    ),
    "unknown top-level key": (
        BASE + "trainer: {epochs: 3}\n",
        "line 5, trainer",
        "unknown key 'trainer' (did you mean 'training'?)",
    ),
    "unknown nested key": (
        BASE.replace("{epochs: 2}", "{epochs: 2, learning_rat: 0.1}"),
        "training.learning_rat",
        "did you mean 'learning_rate'",
    ),
    "wrong type": (
        BASE.replace("{epochs: 2}", "{epochs: two}"),
        "line 4, training.epochs",
        "valid integer",
    ),
    "negative epochs": (
        BASE.replace("{epochs: 2}", "{epochs: -1}"),
        "training.epochs",
        "greater than or equal to 1; got -1",
    ),
    "unknown fusion in fixed config": (
        BASE + "method: {flare: {fusion: concat}}\n",
        "method.flare.fusion",
        "unknown fusion function 'concat'; expected one of ['add', 'add_relu', 'cross_attention', 'mul']",
    ),
    "unknown fusion inside a categorical space": (
        BASE + "search:\n  space:\n    method.flare.fusion: {type: categorical, values: [add, mul, concat]}\n",
        "search.space.method.flare.fusion.values[2]",
        "'concat' gives an invalid config: method.flare.fusion: unknown fusion function",
    ),
    "space key that does not exist": (
        BASE + "search:\n  space:\n    method.lora.rank: {type: int, low: 2, high: 8}\n",
        "search.space.method.lora.rank",
        "unknown key 'rank' (did you mean 'r'?)",
    ),
    "space key of a value, not a section": (
        BASE + "search:\n  space:\n    training.epochs.max: {type: int, low: 2, high: 8}\n",
        "search.space.training.epochs.max",
        "training.epochs is a value (2), not a section",
    ),
    "fixed key in the space": (
        BASE + "search:\n  space:\n    scaling.num_workers: {type: int, low: 1, high: 4}\n",
        "search.space.scaling.num_workers",
        "cannot be searched: resources per trial are fixed",
    ),
    "when on an unknown key": (
        BASE + "search:\n  space:\n    method.flare.cross_attention_heads:\n"
        "      {type: categorical, values: [1, 2], when: {method.flare.fuse: cross_attention}}\n",
        "search.space.method.flare.cross_attention_heads.when.method.flare.fuse",
        "unknown key in when: method.flare.fuse: unknown key 'fuse' (did you mean 'fusion'?)",
    ),
    "when on a key sampled later": (
        BASE + "search:\n  space:\n    method.flare.cross_attention_heads:\n"
        "      {type: categorical, values: [1, 2], when: {method.flare.fusion: cross_attention}}\n"
        "    method.flare.fusion: {type: categorical, values: [add, cross_attention]}\n",
        "search.space.method.flare.cross_attention_heads.when.method.flare.fusion",
        "list it earlier in search.space",
    ),
    "when on a value never sampled": (
        BASE + "search:\n  space:\n    method.flare.fusion: {type: categorical, values: [add, mul]}\n"
        "    method.flare.cross_attention_heads:\n"
        "      {type: categorical, values: [1, 2], when: {method.flare.fusion: cross_attention}}\n",
        "search.space.method.flare.cross_attention_heads.when.method.flare.fusion",
        "['cross_attention'] never sampled",
    ),
    "low >= high": (
        BASE + "search:\n  space:\n    training.learning_rate: {type: float, low: 0.01, high: 0.001}\n",
        "search.space.training.learning_rate",
        "`low <= high` must hold, but got (low=0.01, high=0.001)",
    ),
    "loguniform with low <= 0": (
        BASE + "search:\n  space:\n    training.learning_rate: {type: loguniform, low: 0, high: 1e-3}\n",
        "search.space.training.learning_rate",
        "`low > 0` must hold for `log=True`",
    ),
    "int bound that makes an invalid config": (
        BASE + "search:\n  space:\n    method.lora.r: {type: int, low: 0, high: 8}\n",
        "search.space.method.lora.r.low",
        "0 gives an invalid config: method.lora.r: Input should be greater than or equal to 1",
    ),
    "float range on an int key": (
        BASE + "search:\n  space:\n    training.epochs: {type: float, low: 1, high: 5}\n",
        "search.space.training.epochs",
        "valid integer",
    ),
    "unknown distribution type": (
        BASE + "search:\n  space:\n    training.learning_rate: {type: uniform, low: 0.1, high: 0.2}\n",
        "search.space.training.learning_rate",
        "tag 'uniform' found using 'type' does not match any of the expected tags",
    ),
    "unknown key in a distribution": (
        BASE + "search:\n  space:\n    method.lora.r: {type: categorical, choices: [4, 8]}\n",
        "search.space.method.lora.r.choices",
        "unknown key 'choices'; expected one of ['when', 'type', 'values']",
    ),
    "incompatible pair of values": (
        BASE + "method: {flare: {fusion: cross_attention}}\nsearch:\n  space:\n"
        "    method.lora.r: {type: categorical, values: [2, 8]}\n"
        "    method.flare.cross_attention_heads: {type: categorical, values: [1, 4]}\n",
        "search.space: method.lora.r = 2 with method.flare.cross_attention_heads = 4",
        "heads (4) must divide the LoRA rank r (2)",
    ),
    "unknown language for the task": (
        BASE.replace("languages: [jav]", "languages: [jav, sw]"),
        "line 3, task.languages[1]",
        "unknown language 'sw'; expected one of ['ace', 'ban'",
    ),
    "metric not reported by the task": (
        BASE + "search: {metric: validation/exact_match}\n",
        "search.metric",
        "task nusax reports no 'validation/exact_match'; expected one of ['validation/accuracy', 'validation/macro_f1'",
    ),
    "flare_mt without mt_encoder": (
        BASE + "method: {kind: flare_mt}\n",
        "method.flare.mt_encoder",
        "method.kind flare_mt needs an MT model here",
    ),
    "unknown tiny architecture": (
        BASE.replace("tiny:xlm-roberta", "tiny:gpt2"),
        "model.name_or_path",
        "unknown tiny architecture 'gpt2'; expected tiny:<arch> with arch in ['xlm-roberta', 'bert', 'mt5', 'llama', 'gemma2']",
    ),
    "mt split on remote storage without mt_dir": (  # locally, the sweep translates into <storage_path>/mt
        BASE.replace("languages: [jav]", "languages: [jav], splits: {validation: mt}")
        + "storage_path: s3://bucket/sweeps\n",
        "task.mt_dir",
        "storage_path is remote (s3://bucket/sweeps): the sweep translates into a local or shared folder",
    ),
    "both alpha and alpha_ratio": (
        BASE + "method: {lora: {alpha: 16, alpha_ratio: 2}}\n",
        "method.lora.alpha_ratio",
        "set alpha (16.0) or alpha_ratio (2.0), not both",
    ),
    "duplicate key": (
        BASE + "training: {epochs: 3}\n",
        "line 5, training",
        "duplicate key",
    ),
    "family that contradicts the tiny model": (
        BASE.replace('"tiny:xlm-roberta"}', '"tiny:llama", family: encoder}'),
        "line 2, model.family",
        "tiny:llama is of family 'decoder'; got 'encoder'",
    ),
    "fusion searched for plain LoRA": (
        BASE
        + "method: {kind: lora}\nsearch:\n  space:\n    method.flare.fusion: {type: categorical, values: [add, mul]}\n",
        "search.space.method.flare.fusion",
        "method.kind is 'lora', which does not use method.flare",
    ),
    "ASHA grace period longer than training": (
        BASE + "search: {scheduler: {type: asha, grace_period: 5}}\n",
        "search.scheduler.grace_period",
        "grace period 5 is longer than training.epochs (2)",
    ),
}


@pytest.mark.parametrize("text, path, expected", BAD.values(), ids=BAD.keys())
def test_malformed_yaml_names_file_key_and_expectation(tmp_path, text, path, expected):
    message = error_of(write(tmp_path, text, "bad-config.yaml"))
    assert "bad-config.yaml" in message
    assert path in message, message
    assert expected in message, message


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    message = error_of(write(tmp_path, BASE + "search:\n  space: {method.lora.r: [2, 4}\n", "broken.yaml"))
    assert "broken.yaml, line 6" in message and "YAML syntax error" in message, message


def test_several_problems_are_reported_together(tmp_path):
    message = error_of(write(tmp_path, BASE.replace("{epochs: 2}", "{epochs: 0, batch_size: x}")))
    assert "2 problems" in message and "training.epochs" in message and "training.batch_size" in message


def test_missing_sections_and_file(tmp_path):
    message = error_of(write(tmp_path, "name: t\n"))
    assert "model: Field required" in message and "task: Field required" in message
    assert "cannot read" in error_of(tmp_path / "nowhere.yaml")
    assert "expected a mapping" in error_of(write(tmp_path, "- a\n- b\n"))


def test_yaml_numbers_and_booleans_read_as_yaml_1_2(tmp_path):
    config = load_experiment(
        write(
            tmp_path,
            BASE + "search:\n  space:\n    training.learning_rate: {type: categorical, values: [1e-4, 3e-4]}\n",
        )
    )
    assert config.search.space["training.learning_rate"].values == [1e-4, 3e-4]
    with pytest.raises(ExperimentConfigError, match="task nusax: unknown language 'no'"):
        load_experiment(write(tmp_path, BASE.replace("[jav]", "[no]")))  # 'no' stays a string


# -- overrides ---------------------------------------------------------------------------------------
def test_overrides(tmp_path):
    path = write(tmp_path, BASE)
    config = load_experiment(
        path,
        [
            "training.epochs=3",
            "--set task.languages=[ban, sun]",
            "task.max_records.train=10",
            "method.flare.fusion=mul",
        ],
    )
    assert config.training.epochs == 3 and config.task.languages == ["ban", "sun"]
    assert config.task.max_records == {"train": 10} and config.method.flare.fusion == "mul"
    xnli = load_experiment(path, ["task.name=xnli", "task.languages=[sw,ur]"])
    assert xnli.task.languages == ["sw", "ur"] and xnli.search.metric == "validation/accuracy"
    space = load_experiment(
        SEARCH_SPACES / "fusion.yaml",
        [
            "search.space.method.flare.fusion.values=[add, mul]",
            "search.space.method.flare.cross_attention_heads.when={}",
        ],
    )
    assert space.search.space["method.flare.fusion"].values == ["add", "mul"]


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "training.epochz=3",
            "training.epochz (from --set training.epochz=3): unknown key 'epochz' (did you mean 'epochs'?)",
        ),
        (
            "training.epochs=-2",
            "training.epochs (from --set training.epochs=-2): Input should be greater than or equal to 1; got -2",
        ),
        (
            "task.languages=[sw,ur]",
            "task.languages[0] (from --set task.languages=[sw,ur]): task nusax: unknown language 'sw'",
        ),
        ("training.epochs", "(from --set training.epochs): bad override: expected key.path=value"),
        ("training.epochs.max=3", "bad override: training.epochs is a value (2), not a section"),
        ("training.epochs=[3", "(from --set training.epochs=[3): bad override: the value is not valid YAML"),
    ],
)
def test_a_bad_override_is_named(tmp_path, override, expected):
    message = error_of(write(tmp_path, BASE, "base.yaml"), [override])
    assert "base.yaml" in message and expected in message, message


# -- the search space under Optuna ---------------------------------------------------------------------
def _study(config: ExperimentConfig) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(
        direction=config.search.mode.replace("max", "maximize").replace("min", "minimize"),
        sampler=build_sampler(config.search.sampler),
    )


def test_define_by_run_samples_allowed_values_and_respects_when():
    config = load_experiment(SEARCH_SPACES / "full.yaml")
    space = config.search.space
    define_by_run = DefineByRun(config)
    samples = []

    def objective(trial):
        sample = define_by_run(trial)
        samples.append(sample)
        applied = apply_sample(config, sample)  # every sample gives a valid config
        return applied.training.learning_rate * applied.method.lora.r

    _study(config).optimize(objective, n_trials=40)
    fusions = set()
    for s in samples:
        fusions.add(s["method.flare.fusion"])
        for key in ("method.flare.fusion", "method.lora.r", "method.flare.fusion_layers", "training.batch_size"):
            assert s[key] in space[key].values
        assert 1e-5 <= s["training.learning_rate"] <= 1e-3
        assert s["method.lora.dropout"] in (0.0, 0.05, 0.1, 0.15, 0.2)
        heads_sampled = "method.flare.cross_attention_heads" in s
        assert heads_sampled == (s["method.flare.fusion"] == "cross_attention"), s
        if heads_sampled:
            assert s["method.flare.cross_attention_heads"] in (1, 2, 4)
    assert fusions == {"add", "mul", "add_relu", "cross_attention"}


def test_ask_tell_with_list_valued_choices_and_pickling():
    config = validate_experiment(
        yaml.safe_load(
            BASE
            + textwrap.dedent("""\
        search:
          space:
            method.flare.fusion_layers: {type: categorical, values: [all, [0, 1], "2-3"]}
            method.lora.target_modules: {type: categorical, values: [[query, value], all-linear]}
        """)
        )
    )
    define_by_run = pickle.loads(pickle.dumps(DefineByRun(config)))  # Tune pickles its searcher
    assert isinstance(define_by_run, DefineByRun)
    study, seen = _study(config), set()
    for _ in range(20):
        trial = study.ask()
        sample = define_by_run(trial)
        applied = apply_sample(config, sample)
        assert applied.method.flare.fusion_layers in ("all", [0, 1], "2-3")
        assert applied.method.lora.target_modules in (["query", "value"], "all-linear")
        seen.add(str(sample["method.flare.fusion_layers"]))
        study.tell(trial, 0.0)
    assert len(seen) == 3


def test_when_on_a_fixed_key():
    data = yaml.safe_load(
        BASE + "method: {flare: {fusion: cross_attention}}\nsearch:\n  space:\n"
        "    method.flare.cross_attention_heads: {type: categorical, values: [1, 2],"
        " when: {method.flare.fusion: cross_attention}}\n"
    )
    trial = _study(validate_experiment(data)).ask()
    assert "method.flare.cross_attention_heads" in DefineByRun(validate_experiment(data))(trial)
    data["method"]["flare"]["fusion"] = "add"
    config = validate_experiment(data)
    assert DefineByRun(config)(_study(config).ask()) == {}
    assert "never sampled: method.flare.fusion is fixed to 'add'" in dry_run_text(config)


def test_apply_sample_refuses_an_invalid_sample():
    config = load_experiment(QUICKSTART)
    assert apply_sample(config, {"method.flare.fusion": "mul"}).method.flare.fusion == "mul"
    assert config.method.flare.fusion == "add_relu"  # the original is untouched
    with pytest.raises(
        ExperimentConfigError,
        match=r"(?s)small-flare-search.yaml with sample .*method.lora.r: Input should be greater than or equal to 1",
    ):
        apply_sample(config, {"method.lora.r": 0})
    with pytest.raises(ExperimentConfigError, match="unknown key 'rank'"):
        apply_sample(config, {"method.lora.rank": 4})


# -- helpers -----------------------------------------------------------------------------------------
def test_dry_run_mentions_every_space_key():
    for path in SHIPPED:
        config = load_experiment(path)
        text = dry_run_text(config)
        assert f"experiment {config.name}" in text and config.search.metric in text
        for key, dist in config.search.space.items():
            assert any(line.strip().startswith(key) and dist.describe() in line for line in text.splitlines()), key
        assert yaml.safe_load(text.split("\n\n# search:")[0])["name"] == config.name  # the YAML part parses
    text = dry_run_text(load_experiment(SEARCH_SPACES / "fusion.yaml"))
    assert "when method.flare.fusion = cross_attention" in text


def test_tracking_uri_resolution(tmp_path):
    config = load_experiment(write(tmp_path, BASE + f"storage_path: {tmp_path}/out\n"))
    assert resolve_tracking_uri(config, {}) == f"sqlite:///{tmp_path}/out/mlflow.db"
    assert resolve_tracking_uri(config, {"MLFLOW_TRACKING_URI": "http://mlflow:5000"}) == "http://mlflow:5000"
    named = load_experiment(write(tmp_path, BASE + "tracking: {tracking_uri: 'file:///tmp/mlruns'}\n"))
    assert resolve_tracking_uri(named, {}) == "file:///tmp/mlruns"
    assert named.tracking.experiment_name == "t"


def test_method_helpers_and_deepspeed_file(tmp_path):
    (tmp_path / "ds.json").write_text('{"zero_optimization": {"stage": 2}}')
    config = load_experiment(
        write(
            tmp_path,
            BASE + "method: {kind: flare_mt, lora: {r: 4, target_modules: [query, value]},"
            " flare: {mt_encoder: facebook/nllb-200-distilled-600M}}\n"
            f"scaling: {{use_gpu: true, deepspeed: {tmp_path}/ds.json}}\n",
        )
    )
    assert config.method.lora.peft_kwargs() == {
        "r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.05,
        "target_modules": ["query", "value"],
    }
    assert config.method.flare_config().mt_encoder == "facebook/nllb-200-distilled-600M"
    assert config.scaling.deepspeed == {"zero_optimization": {"stage": 2}}  # read once, shipped inline
    assert config.scaling.resources_per_worker() == {"CPU": 1.0, "GPU": 1.0}
    flare = apply_sample(config, {"method.kind": "flare"})
    assert flare.method.flare_config().mt_encoder is None  # only FLARE-MT uses the MT encoder
    message = error_of(write(tmp_path, BASE + "scaling: {deepspeed: missing.json}\n"))
    assert "scaling.deepspeed" in message and "DeepSpeed config 'missing.json' not found" in message


def test_the_task_section_is_the_tasks_own_config(tmp_path):
    from flare_ray.tasks import TaskConfig

    one = load_experiment(write(tmp_path, BASE.replace("languages: [jav]", "language: jav")))
    assert isinstance(one.task, TaskConfig) and one.task.languages == ["jav"] and one.task.language is None
    assert one.task.task_config("jav") == TaskConfig(name="nusax", language="jav", data_dir=one.task.data_dir)
    message = error_of(write(tmp_path, BASE.replace("languages: [jav]", "language: jav, languages: [ban]")))
    assert "task.languages" in message and "set language or languages, not both" in message
    assert "expected at least one target language" in error_of(write(tmp_path, BASE.replace(", languages: [jav]", "")))

"""The dry run of every shipped YAML, and what keeps it quick: no torch, transformers, peft, Ray, MLflow or
datasets imported on the way (the config modules are leaves; the constants they hold instead are checked
here against their sources), and the whole config validated a handful of times, not once per value and pair
of the search space (the space is checked section by section, with the same problems)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flare_ray.cli.tune import main
from flare_ray.experiment import ExperimentConfig, ExperimentConfigError, apply_sample, load_experiment
from flare_ray.experiment.space import SampleCheck
from tests.helpers import REPO, counted_validations
from tests.hub_cache import fake_hub_cache

SPACES = REPO / "search_spaces"
SHIPPED = sorted(SPACES.rglob("*.yaml"))
HEAVY = ("torch", "transformers", "peft", "ray", "mlflow", "datasets")

BASE = """\
name: t
model: {name_or_path: "tiny:xlm-roberta"}
task: {name: nusax, languages: [jav]}
training: {epochs: 3}
"""


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """The hub models of the shipped YAMLs in a local cache (config.json only), read offline."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(fake_hub_cache(tmp_path)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(SPACES)))
def test_every_shipped_yaml_dry_runs(path, hub_cache, capsys):
    with counted_validations() as validations:
        assert main([str(path), "--dry-run"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert out.startswith("# experiment ") and f"(from {path})" in out and "# search space" in out
    assert validations() <= 3  # a handful: not once per value and pair of the space


@pytest.mark.parametrize("name", ["quickstart.yaml", "paper/table1-nusax.yaml"])
def test_the_dry_run_imports_no_heavy_package(name, tmp_path):
    code = textwrap.dedent("""\
        import sys
        import flare_ray.cli.tune
        status = flare_ray.cli.tune.main([sys.argv[1], "--dry-run"])
        print("loaded:", sorted(m for m in sys.argv[2:] if m in sys.modules))
        sys.exit(status)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(fake_hub_cache(tmp_path))}
    done = subprocess.run(
        [sys.executable, "-c", code, str(SPACES / name), *HEAVY],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "loaded: []"


# -- the search space, checked section by section ------------------------------------------------------
SAMPLES = [
    {"method.lora.r": 16},
    {"method.lora.r": 0},
    {"method.flare.fusion": "no-such-fusion"},
    {"method.flare.fusion": "cross_attention", "method.flare.cross_attention_heads": 3},
    {"method.flare.fusion": "cross_attention", "method.flare.cross_attention_heads": 4, "method.lora.r": 2},
    {"method.flare.fusion_layers": "0-3"},
    {"method.flare.fusion_layers": "zero"},
    {"method.kind": "flare_mt"},
    {"method": {"kind": "lora"}},
    {"method.lora.rank": 4},
    {"training.lr_scheduler": "greedy"},
    {"training.learning_rate": -1.0, "method.lora.dropout": 1.5},
    {"training.epochs": 1},
    {"training.learning_rate.low": 1.0},
    {"model.name_or_path": "tiny:gpt2"},
    {"model.family": "decoder"},
    {"task.splits": {"validation": "mt"}},
    {"task.languages": ["jav", "sw"]},
    {"scaling.gpus_per_worker": 1},
    {"no_such_section.key": 1},
]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda s: ",".join(s))
def test_a_sample_checked_by_section_has_the_problems_of_the_whole_config(sample, tmp_path):
    config = load_experiment(_write(tmp_path, BASE + "search: {scheduler: {type: asha, grace_period: 2}}\n"))
    try:
        apply_sample(config, sample)
        whole = []
    except ExperimentConfigError as err:
        whole = [(p.path, p.message) for p in err.problems]
    assert [(p.path, p.message) for p in SampleCheck(config).problems(sample)] == whole


def test_the_keys_across_sections_are_what_their_check_reads(tmp_path):
    from pydantic import BaseModel

    config = load_experiment(_write(tmp_path, BASE + "search: {scheduler: {type: asha, grace_period: 2}}\n"))
    config.search.metric = config.tracking.experiment_name = None  # every branch: the defaults set again
    seen: set[str] = set()

    class Reader:  # records every attribute path the check reads or writes
        def __init__(self, obj, path=""):
            object.__setattr__(self, "_obj", obj)
            object.__setattr__(self, "_path", path)

        def __getattr__(self, name):
            path = f"{self._path}.{name}".lstrip(".")
            seen.add(path)
            value = getattr(self._obj, name)
            return Reader(value, path) if isinstance(value, BaseModel) else value

        def __setattr__(self, name, value):
            seen.add(f"{self._path}.{name}".lstrip("."))
            setattr(self._obj, name, value)

    check = ExperimentConfig.__pydantic_decorators__.model_validators["_across_sections"].func
    check(Reader(config))
    assert {"task.name", "training.epochs", "search.scheduler.grace_period"} <= seen  # it did read
    across = ExperimentConfig.ACROSS_KEYS
    assert all(any(p == a or p.startswith(a + ".") or a.startswith(p + ".") for a in across) for p in seen), seen


def test_every_grid_cell_is_checked_before_ray_starts(tmp_path, capsys):
    # Every value and every pair is fine; the one cell with all three is not (4 heads do not divide r = 2).
    path = _write(
        tmp_path,
        BASE
        + textwrap.dedent("""\
        search:
          grid:
            method.flare.fusion: [add, cross_attention]
            method.flare.cross_attention_heads: [1, 4]
            method.lora.r: [8, 2]
        """),
    )
    with pytest.raises(ExperimentConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert f"{path}: invalid experiment config (1 problem)" in message
    assert (
        "line 6, search.grid: the cell method.flare.fusion = 'cross_attention', method.flare.cross_attention_heads"
        " = 4, method.lora.r = 2 gives an invalid config"
    ) in message
    assert "cross_attention heads (4) must divide the LoRA rank r (2)" in message
    assert main([str(path), "--dry-run"]) == 2 and "the cell method.flare.fusion" in capsys.readouterr().err


# -- the constants that keep the config modules light, against their sources ---------------------------------
def test_the_learning_rate_schedulers_are_transformers_own():
    from transformers import SchedulerType

    from flare_ray.experiment.training import LR_SCHEDULERS

    needing_arguments = {
        "reduce_lr_on_plateau",
        "warmup_stable_decay",
        "cosine_with_min_lr",
        "cosine_warmup_with_min_lr",
        "greedy",
    }
    assert set(LR_SCHEDULERS) == {s.value for s in SchedulerType} - needing_arguments


def test_the_builtin_fusions_are_those_registered():
    from flare_ray.fusion.config import BUILTIN_FUSIONS, registered_fusions
    from flare_ray.fusion.functions import FUSION_FUNCTIONS

    builtin = {name for name, f in FUSION_FUNCTIONS.items() if f.__module__ == "flare_ray.fusion.functions"}
    assert builtin == set(BUILTIN_FUSIONS)
    assert registered_fusions() == tuple(FUSION_FUNCTIONS)  # once imported, the registry (with any of yours)


@pytest.mark.parametrize("arch", ["xlm-roberta", "bert", "mt5", "llama", "gemma2", "m2m_100"])
def test_the_tiny_layer_counts_are_the_tiny_models(arch, tmp_path):
    import json

    from flare_ray.experiment.checks import num_layers
    from flare_ray.models.tiny import LAYERS, _config

    (tmp_path / "config.json").write_text(json.dumps(_config(arch).to_dict()))  # as the built model saves it
    assert num_layers(str(tmp_path))[0] == LAYERS[arch] == num_layers(f"tiny:{arch}")[0]


@pytest.mark.parametrize("arch", ["xlm-roberta", "bert", "mt5", "llama", "gemma2", "m2m_100"])
def test_the_tiny_position_counts_are_the_tiny_models(arch, tmp_path):
    import json

    from flare_ray.experiment.checks import num_positions
    from flare_ray.models.positions import max_input_positions
    from flare_ray.models.tiny import POSITIONS, _config

    (tmp_path / "config.json").write_text(json.dumps(_config(arch).to_dict()))
    assert max_input_positions(_config(arch)) == POSITIONS[arch]
    assert [n and n[0] for n in (num_positions(str(tmp_path)), num_positions(f"tiny:{arch}"))] == [POSITIONS[arch]] * 2


def test_a_max_length_the_model_cannot_read_is_refused_before_anything_runs(tmp_path):
    """Every value of training.max_length (the config's, the grid's, the space's upper bound), against the
    positions in the model's config.json."""
    import json

    from flare_ray.experiment import ExperimentConfigError

    model = tmp_path / "xlmr"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps(
            {"model_type": "xlm-roberta", "max_position_embeddings": 514, "pad_token_id": 1, "num_hidden_layers": 24}
        )
    )
    text = BASE.replace("tiny:xlm-roberta", str(model)) + "search: {grid: {training.max_length: [128, 1024]}}\n"
    with pytest.raises(ExperimentConfigError) as err:
        load_experiment(_write(tmp_path, text))
    messages = [f"{'.'.join(map(str, p.path))}: {p.message}" for p in err.value.problems]
    assert messages == [
        f"search.grid.training.max_length.1: 1024 tokens is more than {model} reads (512 positions, "
        f"max_position_embeddings in {model / 'config.json'}); expected at most 512"
    ]
    load_experiment(_write(tmp_path, text.replace("1024", "512")))  # 512 fits


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path

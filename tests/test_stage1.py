"""Stage 1's fingerprint: the same for the same inputs, different when anything stage 1 depends on changes."""

from __future__ import annotations

from pathlib import Path

from flare_ray.experiment import load_experiment
from flare_ray.training.stage1 import fingerprint, stage1_experiment

QUICKSTART = Path(__file__).resolve().parent.parent / "search_spaces" / "quickstart.yaml"


def config(*overrides):
    return load_experiment(QUICKSTART, ["model.stage1=auto", *overrides])


def test_fingerprint_keys_everything_stage1_depends_on():
    base = fingerprint(config())
    assert fingerprint(config()) == base
    # what trials search, or how the sweep is run, does not change stage 1
    assert fingerprint(config("method.flare.fusion=mul", "search.num_samples=2", "name=other")) == base
    changed = [
        "training.seed=1", "method.lora.r=4", "task.max_records={train: 100}", "model.quantization=4bit",
        "stage1.training={epochs: 1}", "stage1.lora={r: 16}", "training.lr_scheduler=constant",
    ]
    prints = {fingerprint(config(o)) for o in changed}
    assert len(prints) == len(changed) and base not in prints


def test_stage1_runs_plain_lora_with_its_own_sections():
    s1 = stage1_experiment(config("stage1.lora={r: 16}", "stage1.training={epochs: 2}"))
    assert s1.method.kind == "lora" and s1.method.lora.r == 16 and s1.training.epochs == 2
    assert s1.model.stage1 is None and s1.search.space == {}

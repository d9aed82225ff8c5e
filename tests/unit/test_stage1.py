"""Stage 1's fingerprint: the same for the same inputs, different when anything stage 1 depends on changes."""

from __future__ import annotations

from flare_ray.experiment import load_experiment
from flare_ray.training.stage1 import fingerprint, stage1_experiment
from tests.helpers import QUICKSTART


def config(*overrides):
    return load_experiment(QUICKSTART, ["model.stage1=auto", *overrides])


def test_fingerprint_keys_everything_stage1_depends_on():
    base = fingerprint(config())
    assert fingerprint(config()) == base
    # what trials search, or how the sweep is run, does not change stage 1
    assert fingerprint(config("method.flare.fusion=mul", "search.num_samples=2", "name=other")) == base
    changed = [
        "training.seed=1",
        "method.lora.r=4",
        "task.max_records={train: 100}",
        "model.quantization=4bit",
        "stage1.training={epochs: 1}",
        "stage1.lora={r: 16}",
        "training.lr_scheduler=constant",
        "training.group_by_length=true",
        "training.compile=true",
        "model.attn_implementation=eager",
    ]
    prints = {fingerprint(config(o)) for o in changed}
    assert len(prints) == len(changed) and base not in prints


def test_stage1_runs_plain_lora_with_its_own_sections():
    s1 = stage1_experiment(config("stage1.lora={r: 16}", "stage1.training={epochs: 2}"))
    assert s1.method.kind == "lora" and s1.method.lora.r == 16 and s1.training.epochs == 2
    assert s1.model.stage1 is None and s1.search.space == {}


def test_a_4bit_stage1_adapter_merges_into_the_4bit_base_trials_load(tmp_path):
    """Stage 1 and trials load the model through one function, quantization included: a stage-1
    adapter trained on the 4-bit base merges into the 4-bit base of a trial and changes its output."""
    import bitsandbytes as bnb
    import torch

    from flare_ray.tasks import get_task
    from flare_ray.training.adapter import build_adapter
    from flare_ray.training.setup import load_base

    overrides = ["model.name_or_path=tiny:llama", "model.quantization=4bit", "model.stage1=null"]
    s1 = stage1_experiment(config(*overrides))
    task = get_task(s1.task.task_config("jav"))
    base = load_base(s1, task)
    assert isinstance(base.model.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)
    adapted = build_adapter(base.model, s1.method)
    with torch.no_grad():  # stand-in for stage-1 training
        for name, p in adapted.named_parameters():
            if "lora_B" in name:
                p.add_(torch.randn_like(p) * 0.5)
    adapted.save_pretrained(tmp_path / "stage1")

    ids = torch.tensor([[1, 40, 41, 42, 43]])
    plain = load_base(s1, task).model
    trial = load_base(config(*overrides[:2], f"model.stage1={tmp_path / 'stage1'}"), task).model
    assert isinstance(trial.model.layers[0].self_attn.q_proj, bnb.nn.Linear4bit)  # still 4-bit, merged
    assert not any("lora" in n for n, _ in trial.named_parameters())
    with torch.no_grad():
        assert not torch.allclose(trial(input_ids=ids).logits, plain(input_ids=ids).logits)

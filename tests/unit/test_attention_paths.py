"""The attention and LoRA paths of a trial (issue 31, item 2): ``model.attn_implementation`` (the attention
kernels the base model loads with, tagged on the trial's run) and ``training.compile`` (torch.compile of the
training steps). FLARE hooks the LoRA modules around attention, so every path must still fuse, and give the
same outputs and losses as the plain one."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig

from flare_ray.experiment import load_experiment
from flare_ray.experiment.training import ScalingSpec, TrainingSpec
from flare_ray.fusion import FlareConfig, default_task_type, get_flare_model
from flare_ray.models.loading import attn_implementation, load_model
from flare_ray.training import engine as engine_module
from flare_ray.training.session import in_tune_trial
from tests.helpers import QUICKSTART, batches, source_kwargs, task_kwargs
from tests.unit.test_checkpoints import new_callback, tracking, trial  # noqa: F401 (tracking: a fixture)

ARCHS = {"encoder": "xlm-roberta", "decoder": "llama"}
LABELS = ("negative", "neutral", "positive")


def flare_on(tiny_path, family: str, attention: str | None):
    """A FLARE model (add_relu, LoRA r=8 with B drawn non-zero) on the tiny base loaded with ``attention``."""
    torch.manual_seed(0)
    model, tok = load_model(str(tiny_path(ARCHS[family])), family, labels=LABELS, attn_implementation=attention)
    lora = LoraConfig(task_type=default_task_type(model), r=8, lora_alpha=16, lora_dropout=0.0, init_lora_weights=False)
    fm = get_flare_model(model, FlareConfig(fusion="add_relu"), lora)
    t, s = batches(tok)
    return fm, {**t, **source_kwargs(s), **task_kwargs(family, tok, t)}


@pytest.mark.parametrize("family", ["encoder", "decoder"])
def test_flare_fuses_and_agrees_under_eager_and_sdpa_attention(tiny_path, family):
    out = {}
    for attention in ("eager", "sdpa"):
        fm, batch = flare_on(tiny_path, family, attention)
        assert attn_implementation(fm) == attention  # read through the FLARE and peft wrappers
        fm.train()
        with fm.require_fusion() as counts:  # FusionNotAppliedError if a site's hook never ran
            loss = fm(**batch).loss
            loss.backward()
        assert all(n >= 1 for n in counts.values())
        grads = {n: p.grad.clone() for n, p in fm.named_parameters() if p.grad is not None}
        out[attention] = loss.detach(), grads
    (eager, eager_grads), (sdpa, sdpa_grads) = out["eager"], out["sdpa"]
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)
    assert eager_grads.keys() == sdpa_grads.keys() and any("lora_A" in n for n in eager_grads)
    for name in eager_grads:
        torch.testing.assert_close(sdpa_grads[name], eager_grads[name], atol=1e-5, rtol=1e-4)


def test_transformers_default_is_kept_when_none_is_asked_for(tiny_path):
    fm, _ = flare_on(tiny_path, "encoder", None)
    assert attn_implementation(fm) == "sdpa"  # transformers 5's choice for XLM-R
    assert attn_implementation(torch.nn.Linear(2, 2)) == "unknown"


def test_the_config_refuses_an_unknown_attention_and_flash_attention_without_its_package(monkeypatch):
    with pytest.raises(ValueError, match=r"model\.attn_implementation.*'sdpa'"):
        load_experiment(QUICKSTART, ["model.attn_implementation=flash"])
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else find_spec(name))
    with pytest.raises(ValueError, match=r"model\.attn_implementation.*flash_attn package"):
        load_experiment(QUICKSTART, ["model.attn_implementation=flash_attention_2"])
    assert load_experiment(QUICKSTART, ["model.attn_implementation=eager"]).model.attn_implementation == "eager"


def test_compile_is_refused_under_deepspeed():
    with pytest.raises(ValueError, match=r"training\.compile.*DeepSpeed"):
        load_experiment(QUICKSTART, ["training.compile=true", "scaling.deepspeed={zero_optimization: {stage: 2}}"])


def test_a_search_plan_holds_the_new_keys_only_when_set():
    """A sweep saved before these keys resumes with the same plan (``--resume`` compares plans key by key)."""
    from flare_ray.search.plan import plan_searches
    from flare_ray.search.resume import search_plan

    def plan(*overrides):
        config = load_experiment(QUICKSTART, list(overrides))
        return search_plan(plan_searches(config)[0])["config"]

    default = plan()
    assert "attn_implementation" not in default["model"] and "compile" not in default["training"]
    changed = plan("model.attn_implementation=eager", "training.compile=true")
    assert changed["model"]["attn_implementation"] == "eager" and changed["training"]["compile"] is True


def step(tiny_path, compile: bool, monkeypatch) -> float:
    """One training step of the tiny FLARE encoder through the engine, in the fusion check; its loss."""
    monkeypatch.setattr(engine_module, "COMPILE_BACKEND", "eager")  # dynamo's graphs, run without compiling them
    fm, batch = flare_on(tiny_path, "encoder", None)
    spec = TrainingSpec(learning_rate=3e-2, warmup_ratio=0.0, epochs=1, compile=compile)
    loader = torch.utils.data.DataLoader([batch], batch_size=None)
    with in_tune_trial():
        engine = engine_module.Engine(fm, spec, ScalingSpec(), total_steps=1, quantized=False)
    assert isinstance(engine.model, torch._dynamo.eval_frame.OptimizedModule) == compile
    assert engine.unwrapped is fm  # scoring and checkpoints see the model as it is
    return engine.train_epoch(loader, 1, first_step=fm.require_fusion)  # FusionNotAppliedError if it did not fuse


def test_a_compiled_trial_fuses_and_trains_as_the_plain_one(tiny_path, monkeypatch):
    torch._dynamo.reset()
    assert step(tiny_path, True, monkeypatch) == pytest.approx(step(tiny_path, False, monkeypatch), abs=1e-5)


def test_the_attention_a_trial_ran_is_tagged_on_its_run(tracking, tmp_path):  # noqa: F811
    from flare_ray.tracking.mlflow_runs import ATTENTION_TAG
    from flare_ray.training.engine import ATTENTION_KEY

    callback = new_callback(*tracking, tmp_path)
    callback.on_trial_result(0, [], trial(), {"epoch": 1, "validation/macro_f1": 1.0, ATTENTION_KEY: "sdpa"})
    callback.on_trial_result(0, [], trial(), {"epoch": 2, "validation/macro_f1": 2.0})
    callback.flush()
    run = callback.client.get_run(callback.run_id(trial()))
    assert run.data.tags[ATTENTION_TAG] == "sdpa"
    assert ATTENTION_KEY not in run.data.metrics and run.data.metrics["validation/macro_f1"] == 2.0

"""Weights the checkpoint lacks: trained as the task head and saved with every adapter.

A sentence-embedding checkpoint (multilingual-e5, and the tiny BERT built like it) has no pooler and no task
head: transformers draws both at random whenever the model loads. Unless both are trained and saved, stage 1,
each trial, ``predict`` and a restarted trial read a different random pooler, drawn from whatever the random
state is at load time. Here stage 1 → a trial (two seeds) → the scoring-only methods → ``predict`` → a restarted
trial all see the same weights: the same logits on a fixed batch, bit for bit on CPU. And a ``lora`` trial on
that model equals a plain peft loop that trains the same head (``test_recipe.py`` for the tiny XLM-R).
"""

from __future__ import annotations

import pytest
import torch

from flare_ray.experiment import ExperimentConfig
from flare_ray.models.loading import initialised_modules, load_model, newly_initialised
from flare_ray.training.setup import build_trial
from tests.sweeps import LORA, SETTINGS, minimal_peft_loop, run_trial

LABELS = ("positive", "neutral", "negative")


def experiment(tmp_path, kind: str = "lora", stage1=None, records=(64, 32, 32), **training) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "head",
            "storage_path": str(tmp_path),
            "model": {"name_or_path": "tiny:bert", "stage1": None if stage1 is None else str(stage1)},
            "task": {
                "name": "nusax",
                "languages": ["jav"],
                "max_records": dict(zip(("train", "validation", "test"), records)),
            },
            "method": {"kind": kind, "lora": LORA},
            "training": {**SETTINGS, "epochs": 1, "learning_rate": 5e-3, **training},
            "scaling": {"cpus_per_worker": 1},
        }
    )


def logits(model, batch) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def train_steps(model, batch, steps: int = 3) -> None:
    """A few optimizer steps on every trainable parameter (a stand-in for an epoch)."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    for _ in range(steps):
        model(**batch, labels=torch.tensor([0, 1, 2, 0])).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_the_modules_a_checkpoint_lacks_are_named_at_their_outermost():
    bert, _ = load_model("tiny:bert", "encoder", labels=LABELS)
    assert newly_initialised(bert) == ("bert.pooler", "classifier")
    xlmr, _ = load_model("tiny:xlm-roberta", "encoder", labels=LABELS)
    assert newly_initialised(xlmr) == ("classifier",)  # RobertaClassificationHead: dense and out_proj, both missing
    # a module of which only some parameters are missing is named by the module holding them
    assert initialised_modules(bert, {"bert.pooler.dense.bias"}) == ("bert.pooler.dense",)


def test_stage1_trials_predict_and_restarts_see_the_same_weights(tmp_path):
    """The frozen weights (pooler included) come from stage 1 whatever the trial's seed, and a saved adapter
    scores exactly as the model that was trained."""
    from flare_ray.training.stage1 import stage1_experiment

    stage1 = build_trial(stage1_experiment(experiment(tmp_path, seed=11)), "jav", roles=("train",), english=True)
    assert {"bert.pooler", "classifier"} <= set(stage1.model.peft_config["default"].modules_to_save)
    rows = list(stage1.splits["train"])[:4]
    batch = stage1.encoder.train_batch(rows).inputs
    batch = {k: v for k, v in batch.items() if k != "labels"}
    train_steps(stage1.model, batch)
    stage1.model.save_pretrained(tmp_path / "stage1")
    trained_stage1 = logits(stage1.model, batch)

    starts = {}
    for seed in (0, 1):  # a trial draws its LoRA (and would draw a random pooler) from its own seed
        trial = build_trial(experiment(tmp_path, stage1=tmp_path / "stage1", seed=seed), "jav")
        starts[seed] = logits(trial.model, batch)
    assert torch.equal(starts[0], starts[1]), "two seeds of a trial must start from the same stage-1 model"
    torch.testing.assert_close(starts[0], trained_stage1, rtol=1e-4, atol=1e-4)  # merged: rounding only
    for kind in ("zero_shot", "translate_test"):  # scoring-only methods read the merged stage-1 model
        scorer = build_trial(experiment(tmp_path, kind=kind, stage1=tmp_path / "stage1"), "jav").model
        assert torch.equal(logits(scorer, batch), starts[0])

    # a trial trains its LoRA and head; predict, and a trial restarted from that state, read the same weights
    trial = build_trial(experiment(tmp_path, stage1=tmp_path / "stage1", seed=0), "jav")
    train_steps(trial.model, batch)
    trained = logits(trial.model, batch)
    assert not torch.equal(trained, starts[0])
    trial.model.save_pretrained(tmp_path / "adapter")
    state = {k: v.detach().clone() for k, v in trial.model.named_parameters() if v.requires_grad}
    assert any(k.startswith("base_model.model.bert.pooler.") for k in state), "the pooler trains with the head"

    torch.manual_seed(1234)  # whatever the random state at load time
    scored = build_trial(experiment(tmp_path, stage1=tmp_path / "stage1", seed=1), "jav", adapter=tmp_path / "adapter")
    assert torch.equal(logits(scored.model, batch), trained)

    restarted = build_trial(experiment(tmp_path, stage1=tmp_path / "stage1", seed=0), "jav")
    params = dict(restarted.model.named_parameters())
    with torch.no_grad():
        for key, value in state.items():
            params[key].copy_(value)
    assert torch.equal(logits(restarted.model, batch), trained)

    # merging stage 1 draws nothing from the random state: a trial's LoRA is the one its seed draws, as in a
    # plain loop that seeds, loads the model and adds the LoRA (peft initialised the stage-1 adapter's layers
    # at random before filling them from the file, so every trial with a stage 1 drew another LoRA)
    alone = build_trial(experiment(tmp_path, seed=0), "jav").model
    lora_a = lambda model: {k: v for k, v in model.named_parameters() if "lora_A" in k}  # noqa: E731
    assert lora_a(alone).keys() == lora_a(restarted.model).keys()
    assert all(
        torch.equal(v, lora_a(alone)[k])
        for k, v in lora_a(build_trial(experiment(tmp_path, stage1=tmp_path / "stage1", seed=0), "jav").model).items()
    )


@pytest.mark.slow
@pytest.mark.ray
def test_lora_trial_on_a_checkpoint_without_pooler_matches_a_plain_peft_loop(tmp_path, local_ray):
    """No stage 1: the trial draws pooler and classifier from its seed and trains them with the LoRA, as a
    plain peft loop that names the pooler in ``modules_to_save`` does."""
    config = experiment(tmp_path, records=(320, 100, 50), epochs=6, learning_rate=2e-3)
    epochs = [r for r in run_trial(config, tmp_path, "bert-lora") if not r.get("final")]
    losses, f1 = minimal_peft_loop(config, modules_to_save=["bert.pooler"])
    print(
        f"training loss per epoch: trial {[round(r['train/loss'], 4) for r in epochs]}, plain loop "
        f"{[round(x, 4) for x in losses]}; validation macro-F1: trial {epochs[-1]['validation/macro_f1']:.2f}, "
        f"plain loop {f1:.2f}"
    )
    assert epochs[-1]["train/loss"] < 0.9 * epochs[0]["train/loss"], "the trial must learn"
    assert abs(epochs[-1]["train/loss"] - losses[-1]) <= 0.02 * losses[-1]
    assert abs(epochs[-1]["validation/macro_f1"] - f1) <= 2.0


def test_an_adapter_without_the_missing_modules_is_refused(tmp_path):
    """An adapter written before such modules were saved (here: peft's default, the classifier only) would
    score on a random pooler: stage 1 and a trial's adapter are refused, naming what they lack."""
    from peft import LoraConfig, TaskType, get_peft_model

    model, _ = load_model("tiny:bert", "encoder", labels=LABELS)
    get_peft_model(model, LoraConfig(r=4, task_type=TaskType.SEQ_CLS)).save_pretrained(tmp_path / "old")
    with pytest.raises(ValueError, match=r"model.stage1: .*does not hold \['bert.pooler'\].*train it again"):
        build_trial(experiment(tmp_path, stage1=tmp_path / "old"), "jav", roles=())
    with pytest.raises(ValueError, match=r"the trial's adapter: .*does not hold \['bert.pooler'\]"):
        build_trial(experiment(tmp_path), "jav", roles=(), adapter=tmp_path / "old")

"""One truncation rule for decoder prompts: what a decoder is trained on is what it generates from."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from flare_ray.fusion import FlareConfig, get_flare_model
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import IGNORE, TaskEncoder
from tests.helpers import randomize_lora


@pytest.fixture(scope="module")
def llama(tiny_path):
    path = tiny_path("llama")
    torch.manual_seed(0)
    fm = get_flare_model(AutoModelForCausalLM.from_pretrained(path), FlareConfig(fusion="add_relu")).eval()
    randomize_lora(fm, scale=0.3)  # an adapter and fusion that move the logits
    return fm, AutoTokenizer.from_pretrained(path)


def test_teacher_forced_logits_are_the_first_generation_step_on_truncated_prompts(llama):
    fm, tok = llama
    task = get_task({"name": "tydiqa", "language": "sw", "max_records": {"test": 4}})
    encoder = TaskEncoder(task, tok, "decoder", max_length=64, answer_tokens=16)
    assert (encoder.prompt_budget, encoder.answer_budget) == (48, 16)
    worst = 0.0
    for record in task.load("test"):
        assert len(tok(task.prompt(record, "target")).input_ids) > 64  # long enough to be cut in every path
        train = encoder.train_batch([record]).inputs
        prompt = encoder.prompt_batch([record]).inputs
        n_prompt = int((train["labels"][0] == IGNORE).sum())
        # one rule: the same target prompt in training and at inference, the same source prompt in both
        assert n_prompt == encoder.prompt_budget
        assert torch.equal(train["input_ids"][0, :n_prompt], prompt["input_ids"][0])
        assert torch.equal(train["source_input_ids"], prompt["source_input_ids"])
        assert prompt["source_input_ids"].shape[1] == encoder.prompt_budget
        assert train["input_ids"].shape[1] <= 64
        with torch.no_grad():
            teacher_forced = fm(**train).logits[0, n_prompt - 1]
            generated = fm.generate(
                **prompt, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True
            ).logits[0][0]
        worst = max(worst, float((teacher_forced - generated).abs().max()))
    assert worst < 1e-4, worst  # the old rule (training budget max_length - len(answer)) differed by ~1


def test_the_answer_budget_caps_training_answers_and_leaves_short_prompts_alone(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path("llama"))
    task = get_task({"name": "tydiqa", "language": "sw", "max_records": {"test": 8}})
    records = list(task.load("test"))
    encoder = TaskEncoder(task, tok, "decoder", max_length=512, answer_tokens=2)
    batch = encoder.train_batch(records).inputs
    for i, record in enumerate(records):
        answer = batch["labels"][i][batch["labels"][i] != IGNORE]
        assert len(answer) <= 2
        prompt = tok(task.prompt(record, "target")).input_ids
        if len(prompt) <= encoder.prompt_budget:  # uncut prompts are the whole prompt
            assert batch["input_ids"][i][: len(prompt)].tolist() == prompt
    # the reservation never takes more than half of max_length
    assert TaskEncoder(task, tok, "decoder", max_length=40, answer_tokens=32).prompt_budget == 20
    # encoder-decoder prompts are the encoder's input: the whole max_length
    mt5 = AutoTokenizer.from_pretrained(tiny_path("mt5"))
    assert TaskEncoder(task, mt5, "encoder_decoder", max_length=64, generative=True).prompt_budget == 64


def test_classification_reserves_only_the_longest_label(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path("llama"))
    task = get_task({"name": "nusax", "language": "jav", "max_records": {"test": 6}})
    longest = max(len(tok(" " + label, add_special_tokens=False).input_ids) for label in task.labels)
    encoder = TaskEncoder(task, tok, "decoder", max_length=64)  # answer_tokens: 32 by default
    assert encoder.answer_budget == longest + 1 and encoder.prompt_budget == 64 - longest - 1
    batch = encoder.train_batch(list(task.load("test"))).inputs
    for labels in batch["labels"]:
        answer = labels[labels != IGNORE]
        assert answer[-1] == tok.eos_token_id  # no label is cut

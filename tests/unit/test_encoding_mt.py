"""FLARE-MT's input: the text the model reads, in the target language's NLLB tagging."""

from __future__ import annotations

import logging

import pytest
from transformers import AutoTokenizer

from flare_ray.models.loading import load_mt_tokenizer
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import IGNORE, TaskEncoder

# (tiny architecture, family, generative): every head the encoder knows
MODELS = [
    ("xlm-roberta", "encoder", False),
    ("mt5", "encoder_decoder", False),
    ("mt5", "encoder_decoder", True),
    ("llama", "decoder", True),
]
TASKS = [("xnli", "sw", "swh_Latn"), ("tydiqa", "sw", "swh_Latn"), ("nusax", "jav", "jav_Latn")]


def _squeeze(text: str) -> str:
    return "".join(text.split())  # the tiny tokenizers frame and normalise whitespace differently


@pytest.fixture(scope="module")
def mt_path(tiny_path):
    return str(tiny_path("m2m_100"))


def test_load_mt_tokenizer_tags_the_target_language(mt_path, caplog):
    tok = load_mt_tokenizer(mt_path, "sw")
    assert tok.src_lang == "swh_Latn"
    assert tok.convert_ids_to_tokens(tok("Habari").input_ids)[0] == "swh_Latn"
    with caplog.at_level(logging.WARNING, logger="flare_ray.models.loading"):
        fallback = load_mt_tokenizer(mt_path, "mad")
    assert fallback.src_lang == "ind_Latn" and "Madurese" in caplog.text
    assert load_mt_tokenizer("tiny:m2m_100", "jav").src_lang == "jav_Latn"  # resolved like tiny models
    with pytest.raises(ValueError, match="no NLLB-200 code for language 'xx'"):
        load_mt_tokenizer(mt_path, "xx")


def test_an_mt_tokenizer_reading_english_is_refused(tiny_path, mt_path):
    task = get_task({"name": "nusax", "language": "jav"})
    tok = AutoTokenizer.from_pretrained(tiny_path("xlm-roberta"))
    with pytest.raises(ValueError, match=r"tags text as 'eng_Latn'.*load_mt_tokenizer\(name, 'jav'\)"):
        TaskEncoder(task, tok, "encoder", 64, source=False, mt_tokenizer=AutoTokenizer.from_pretrained(mt_path))


@pytest.mark.parametrize("arch,family,generative", MODELS)
@pytest.mark.parametrize("task_name,language,code", TASKS)
def test_mt_input_is_the_model_input_in_the_target_language(
    tiny_path, mt_path, arch, family, generative, task_name, language, code
):
    tok = AutoTokenizer.from_pretrained(tiny_path(arch))
    mt_tok = load_mt_tokenizer(mt_path, language)
    task = get_task({"name": task_name, "language": language, "max_records": {"test": 6}})
    records = list(task.load("test"))
    encoder = TaskEncoder(task, tok, family, 64, source=False, mt_tokenizer=mt_tok, generative=generative)
    cut = False
    for kind, batch in (("train", encoder.train_batch(records)), ("predict", encoder.predict_batch(records))):
        inputs = batch.inputs
        assert "source_input_ids" not in inputs
        assert inputs["mt_input_ids"][:, 0].tolist() == [mt_tok.convert_tokens_to_ids(code)] * len(records), kind
        for i in range(len(records)):
            read = inputs["attention_mask"][i].bool()
            if family == "decoder" and kind == "train":
                read &= inputs["labels"][i] == IGNORE  # the prompt, not the answer
            model_text = tok.decode(inputs["input_ids"][i][read], skip_special_tokens=True)
            mt_ids = inputs["mt_input_ids"][i][inputs["mt_attention_mask"][i].bool()]
            mt_text = mt_tok.decode(mt_ids, skip_special_tokens=True)
            assert _squeeze(mt_text) == _squeeze(model_text), (kind, i)
            if generative:
                assert _squeeze(model_text).endswith("Answer:")  # the prompt, not the raw fields
            cut |= int(read.sum()) >= encoder.prompt_budget - 1
    if task_name == "tydiqa":
        assert cut, "the case needs inputs cut by truncation"


@pytest.mark.parametrize("family,task_name,language", [("encoder", "xnli", "sw"), ("decoder", "tydiqa", "sw")])
def test_a_flare_mt_model_trains_and_predicts_on_these_batches(tiny_path, mt_path, family, task_name, language):
    from tests.helpers import flare

    fm, tok = flare(tiny_path, family, mt_encoder=mt_path)
    task = get_task({"name": task_name, "language": language, "max_records": {"test": 4}})
    records = list(task.load("test"))
    encoder = TaskEncoder(task, tok, family, 64, source=False, mt_tokenizer=load_mt_tokenizer(mt_path, language))
    loss = fm.train()(**encoder.train_batch(records).inputs).loss
    loss.backward()
    assert fm.mt_projection.weight.grad is not None
    predictions = encoder.predict(fm.eval(), records, batch_size=2, max_new_tokens=3)
    assert len(predictions) == len(records)

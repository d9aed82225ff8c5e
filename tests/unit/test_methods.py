"""Every method of the paper on the tiny offline models, without Ray: what each one reads, trains and scores.

Each method trains or not, and its batches carry the English side it reads (FLARE and X-Mixup the source text,
FLARE-MT the MT encoder's input; the model's outputs follow it); zero-shot and translate-test change no parameter
(and translate-test reads the English side); input-level
fusion reads both texts, each within its budget (X-Mixup: ``test_xmixup.py``); FLARE train-only (``fusion_probability``, ``source_at_inference``) fuses only some instances and
never runs the source pass at test time (counted). The same methods end to end through
``python -m flare_ray.tune`` are in ``e2e/test_ablation.py``.
"""

from __future__ import annotations

import pytest
import torch
from peft import PeftModel

from flare_ray.experiment import load_experiment
from flare_ray.fusion import FlareModel
from flare_ray.fusion.provider import SourceBatch
from flare_ray.fusion.source import SourcePass
from flare_ray.models.loading import load_model
from flare_ray.tasks import TaskConfig, get_task
from flare_ray.tasks.encoding import TaskEncoder
from flare_ray.tasks.predictions import score_frame
from flare_ray.training import loop
from flare_ray.training.adapter import build_adapter
from flare_ray.training.setup import build_trial, english_side
from tests.helpers import QUICKSTART, randomize_lora

SMALL = ["task.max_records={train: 16, validation: 12, test: 12}", "search.space={}", "search.scheduler=null"]


def experiment(tmp_path, *overrides):
    return load_experiment(QUICKSTART, [f"storage_path={tmp_path}", *SMALL, *overrides])


def nusax(language="jav", **config):
    return get_task(TaskConfig(name="nusax", language=language, max_records={"train": 16, "test": 12}, **config))


# -- zero-shot and translate-test ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["zero_shot", "translate_test"])
def test_scoring_only_methods_change_no_parameter_and_read_their_side(tmp_path, monkeypatch, kind):
    config = experiment(tmp_path, f"method.kind={kind}")
    trial = build_trial(config, "jav")
    assert not any(p.requires_grad for p in trial.model.parameters())  # the stage-1 model itself, frozen
    before = {k: v.clone() for k, v in trial.model.state_dict().items()}
    reports = []
    monkeypatch.setattr(loop.session, "report", lambda metrics, checkpoint=None: reports.append((metrics, checkpoint)))
    monkeypatch.setattr(loop.session, "device", lambda: torch.device("cpu"))
    loop._score_only(trial, config, "jav", rank=0)
    after = trial.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing trained
    (validation, _), (final, checkpoint) = reports
    assert validation["epoch"] == 0 and "validation/macro_f1" in validation and "train/loss" not in validation
    assert final["final"] and "test/macro_f1" in final

    # The predictions are of the side the method reads: the target text, or its English translation.
    task = get_task(config.task.task_config("jav"))
    test = task.load("test")
    read = english_side(task, test) if kind == "translate_test" else test
    assert list(trial.splits["test"]["target_text"]) == list(read["target_text"])
    assert list(english_side(task, test)["target_text"]) != list(
        test["target_text"]
    )  # so the check above means something
    import pandas as pd

    frame = pd.read_parquet(checkpoint / "predictions" / "test.parquet")  # the checkpoint's folder
    assert not (checkpoint / "adapter_config.json").exists()  # nothing trained, no adapter
    expected = task.score(trial.encoder.predict(trial.model, list(read)), read)
    assert score_frame(task, frame) == expected == {k[5:]: v for k, v in final.items() if k.startswith("test/")}


# -- every method: what it trains, and the English side its batches carry ---------------------------------------
SOURCE, MT = ("source_input_ids", "source_attention_mask"), ("mt_input_ids", "mt_attention_mask")
READS = {  # kind: (trains, the English side in its batches: the source text, or the MT encoder's input)
    "zero_shot": (False, ()),
    "translate_test": (False, ()),  # its splits' English side in place of the target: above
    "lora": (True, ()),
    "input_fusion": (True, ()),  # both texts in one input: below
    "xmixup": (True, SOURCE),
    "flare": (True, SOURCE),
    "flare_mt": (True, MT),
}


@pytest.mark.parametrize("kind", list(READS))
def test_each_method_trains_or_not_and_reads_the_english_side_its_batches_carry(tmp_path, kind):
    trains, side = READS[kind]
    extra = {"flare_mt": ["method.flare.mt_encoder=tiny:m2m_100"], "xmixup": ["method.xmixup.layer=1"]}
    trial = build_trial(experiment(tmp_path, f"method.kind={kind}", *extra.get(kind, [])), "jav", roles=("train",))
    assert any(p.requires_grad for p in trial.model.parameters()) == trains
    batch = trial.encoder.train_batch(list(trial.splits["train"])[:2]).inputs
    assert {k for k in batch if k.startswith(("source_", "mt_"))} == set(side)
    if side:  # the model reads it: each row with the other row's English side, other outputs
        randomize_lora(trial.model)  # past peft's initialisation (LoRA B = 0), where the fusion adds nothing
        swapped = {**batch, **{k: batch[k].flip(0) for k in side}}
        with torch.no_grad():
            assert not torch.allclose(trial.model.eval()(**batch).logits, trial.model(**swapped).logits)


# -- input-level fusion -------------------------------------------------------------------------------
def test_input_fusion_reads_source_then_target_each_within_its_budget():
    task = nusax()
    model, tok = load_model("tiny:xlm-roberta", "encoder", labels=task.labels)
    records = list(task.load("train"))[:4]
    long = dict(records[0], source_text=records[0]["source_text"] * 20, target_text=records[0]["target_text"] * 20)
    max_length = 24
    fused = TaskEncoder(task, tok, "encoder", max_length, source=False, input_fusion=True)
    plain = TaskEncoder(task, tok, "encoder", max_length, source=False)
    batch = fused.train_batch([long, *records[1:]]).inputs
    assert "source_input_ids" not in batch and batch["input_ids"].shape[1] <= 2 * max_length
    for i, record in enumerate([long, *records[1:]]):
        ids = batch["input_ids"][i][batch["attention_mask"][i].bool()].tolist()
        source = tok(record["source_text"], truncation=True, max_length=max_length).input_ids
        target = tok(record["target_text"], truncation=True, max_length=max_length).input_ids
        separator = tok.sep_token_id if tok.sep_token_id is not None else tok.eos_token_id
        assert ids == source + [separator] + target[1:]  # <s> x_S </s></s> x_T </s>: neither side cut by the other
    assert torch.equal(batch["labels"], plain.train_batch([long, *records[1:]]).inputs["labels"])
    lora = build_adapter(model, experiment_method("input_fusion"))
    assert isinstance(lora, PeftModel) and lora(**batch).loss.isfinite()


def test_input_fusion_fits_a_model_that_reads_fewer_than_twice_max_length(tiny_path):
    """max_length 512 on the tiny XLM-R (513 positions, like XLM-R's 512): the two sides split the model's
    positions, so the joined input fits and the model runs on it (cut to max_length each, it would not)."""
    from flare_ray.models.positions import max_input_positions

    task = nusax()
    model, tok = load_model("tiny:xlm-roberta", "encoder", labels=task.labels)
    positions = max_input_positions(model.config)
    assert positions == 513 < 2 * 512
    records = list(task.load("train"))[:2]
    long = dict(records[0], source_text=records[0]["source_text"] * 60, target_text=records[0]["target_text"] * 60)
    assert len(tok(long["source_text"]).input_ids) > 512 and len(tok(long["target_text"]).input_ids) > 512
    fused = TaskEncoder(task, tok, "encoder", 512, source=False, input_fusion=True, max_positions=positions)
    batch = fused.train_batch([long, records[1]]).inputs
    assert batch["input_ids"].shape[1] == 2 * (positions // 2) <= positions  # each side its half
    lora = build_adapter(model, experiment_method("input_fusion"))
    assert lora(**batch).loss.isfinite()
    unsplit = TaskEncoder(task, tok, "encoder", 512, source=False, input_fusion=True).train_batch([long]).inputs
    assert unsplit["input_ids"].shape[1] > positions  # what the model could not read
    with pytest.raises((IndexError, RuntimeError), match="out of"):  # the position embeddings' index
        lora(**unsplit)
    # the other methods read one side cut to max_length, which must fit on its own
    assert TaskEncoder(task, tok, "encoder", 512, source=True, max_positions=positions).side_length == 512
    with pytest.raises(ValueError, match=r"training.max_length: 600 tokens is more than the model reads \(513"):
        TaskEncoder(task, tok, "encoder", 600, source=True, max_positions=positions)
    _, llama = load_model("tiny:llama", "decoder", labels=task.labels)  # a decoder: the answer's budget first
    fused = TaskEncoder(task, llama, "decoder", 1024, source=False, input_fusion=True, max_positions=1024)
    assert 2 * fused.prompt_budget + fused.answer_budget <= 1024


def test_input_fusion_spans_point_into_the_target_part():
    task = get_task(TaskConfig(name="tydiqa", language="sw", max_records={"train": 6}))
    _, tok = load_model("tiny:xlm-roberta", "encoder", labels=None)
    records = list(task.load("train"))[:6]
    batch = TaskEncoder(task, tok, "encoder", 256, source=False, input_fusion=True).train_batch(records)
    for i, record in enumerate(records):
        start, end = int(batch.inputs["start_positions"][i]), int(batch.inputs["end_positions"][i])
        if (start, end) == (0, 0):
            continue  # cut off by truncation
        meta = batch.meta[i]
        text = meta["context"][meta["offsets"][start][0] : meta["offsets"][end][1]]
        assert text.strip() == record["target_answers"][0]["text"].strip()
        assert meta["sequence_ids"][start] == 1 and start > len(tok(record["source_question"]).input_ids)


def test_input_fusion_prompts_for_decoders_hold_both_prompts():
    task = nusax()
    _, tok = load_model("tiny:llama", "decoder", labels=task.labels)
    records = list(task.load("train"))[:2]
    fused = TaskEncoder(task, tok, "decoder", 48, source=False, input_fusion=True)
    plain = TaskEncoder(task, tok, "decoder", 48, source=False)
    for record in records:
        (both, _), (target, _), (source, _) = (
            fused._read_prompt(record),
            plain._read_prompt(record),
            plain._fit_prompt(record, "source"),
        )
        assert both == source + target[1:] and len(both) <= 2 * plain.prompt_budget


def experiment_method(kind: str, **flare):
    from flare_ray.experiment.config import MethodSpec

    return MethodSpec(kind=kind, lora={"r": 4}, flare=flare or {})


# -- FLARE train-only (Appendix E) --------------------------------------------------------------------
def test_train_only_flare_never_runs_the_source_pass_at_inference(monkeypatch):
    task = nusax()
    model, tok = load_model("tiny:xlm-roberta", "encoder", labels=task.labels)
    flare = build_adapter(model, experiment_method("flare", fusion_probability=0.5, source_at_inference=False))
    assert isinstance(flare, FlareModel)
    calls = {"n": 0}
    states = SourcePass.states

    def counted(self, batch):
        calls["n"] += 1
        return states(self, batch)

    monkeypatch.setattr(SourcePass, "states", counted)
    records = list(task.load("test"))
    encoder = TaskEncoder(task, tok, "encoder", 32, source=True)
    predictions = encoder.predict(flare.eval(), records, batch_size=4)
    assert calls["n"] == 0 and len(predictions) == len(records)  # no source pass at test time
    with flare.fusion_disabled():
        plain = encoder.predict(flare, records, batch_size=4)
    assert predictions == plain  # inference is plain LoRA

    flare.train()
    batch = encoder.train_batch(list(task.load("train"))).inputs
    with flare.require_fusion() as counts:
        flare(**batch).loss.backward()
    assert calls["n"] == 1 and all(n > 0 for n in counts.values())  # training reads the source


def test_fusion_probability_fuses_that_fraction_of_instances():
    task = nusax()
    model, tok = load_model("tiny:xlm-roberta", "encoder", labels=task.labels)
    flare = build_adapter(model, experiment_method("flare", fusion_probability=0.5)).train()
    batch = TaskEncoder(task, tok, "encoder", 32, source=True).train_batch(list(task.load("train"))).inputs
    fused_rows = []
    for _ in range(20):
        context = flare._context(SourceBatch.pop_from(dict(batch)), batch["input_ids"], batch["attention_mask"])
        fused_rows += context.alignment.rows.any(-1).tolist()
    share = sum(fused_rows) / len(fused_rows)
    assert 0.35 < share < 0.65, share  # 16 rows x 20 batches at p = 0.5
    flare.eval()
    context = flare._context(SourceBatch.pop_from(dict(batch)), batch["input_ids"], batch["attention_mask"])
    assert bool(context.alignment.rows.any(-1).all())  # at inference every instance fuses (source_at_inference)

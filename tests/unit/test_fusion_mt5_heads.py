"""FLARE on mT5 with a task head (MT5ForSequenceClassification, MT5ForQuestionAnswering).

These are encoder-decoders whose decoder runs on the shifted input and whose
head reads the decoder: FLARE fuses in the encoder, as for the mT5 LM, with
peft's task type of the head (not SEQ_2_SEQ_LM) and the head trained.
"""

from __future__ import annotations

import pytest
import torch
from peft import TaskType
from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification, AutoTokenizer

from flare_ray.fusion import FlareConfig, default_task_type, get_flare_model
from tests.helpers import batches, randomize_lora, source_kwargs

HEADS = {
    "seq_cls": (AutoModelForSequenceClassification, {"num_labels": 3}, TaskType.SEQ_CLS, "classification_head"),
    "qa": (AutoModelForQuestionAnswering, {}, TaskType.QUESTION_ANS, "qa_outputs"),
}
OTHER_SOURCE = ["My cat sleeps on the warm sofa all day.", "Rain."]


def _labels(head):
    if head == "seq_cls":
        return {"labels": torch.tensor([0, 2])}
    return {"start_positions": torch.tensor([1, 2]), "end_positions": torch.tensor([2, 3])}


def _output(head, out):
    return out.logits if head == "seq_cls" else torch.cat([out.start_logits, out.end_logits], -1)


def _load(tiny_path, head, fusion="add_relu"):
    auto, kwargs, _, _ = HEADS[head]
    torch.manual_seed(0)
    model = auto.from_pretrained(tiny_path("mt5"), **kwargs)
    torch.manual_seed(0)
    fm = get_flare_model(model, FlareConfig(fusion=fusion))
    return fm, AutoTokenizer.from_pretrained(tiny_path("mt5"))


@pytest.mark.parametrize("head", list(HEADS))
def test_task_type_sites_and_source_pass_are_the_encoders(tiny_path, head):
    auto, kwargs, task_type, head_name = HEADS[head]
    model = auto.from_pretrained(tiny_path("mt5"), **kwargs)
    assert default_task_type(model) is task_type
    fm, tok = _load(tiny_path, head)
    assert fm.peft_model.peft_config["default"].task_type == task_type
    encoder = fm.peft_model.get_base_model().get_encoder()
    encoder_prefix = {"seq_cls": "transformer.encoder.", "qa": "encoder."}[head]
    assert len(fm.plan.sites) == 2 * len(encoder.block)  # q and v of every encoder block
    assert all(site.name.startswith(encoder_prefix + "block.") for site in fm.plan.sites)
    assert {site.name.rsplit(".", 1)[-1] for site in fm.plan.sites} == {"q", "v"}

    # The source pass runs the frozen encoder: the last block's output, as the encoder computes it.
    _, s = batches(tok)
    last = encoder.block[-1]
    seen = {}
    handle = last.register_forward_hook(lambda m, args, out: seen.update(out=out[0] if isinstance(out, tuple) else out))
    with torch.no_grad(), fm.peft_model.disable_adapter():
        encoder(input_ids=s.input_ids, attention_mask=s.attention_mask)
    handle.remove()
    states = fm.source_states(s.input_ids, s.attention_mask)
    torch.testing.assert_close(states.for_site(fm.plan.sites[-1].name), seen["out"])

    # peft's task type does not know mT5's classification_head; get_flare_model makes it trainable.
    trainable = {n for n, p in fm.named_parameters() if p.requires_grad}
    assert any(head_name in n for n in trainable), sorted(trainable)


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("fusion", ["add_relu", "cross_attention"])
def test_fusion_changes_the_output_and_trains_through_the_source(tiny_path, head, fusion):
    fm, tok = _load(tiny_path, head, fusion)
    randomize_lora(fm, scale=0.2)
    t, s = batches(tok)
    assert (t.input_ids == tok.eos_token_id).sum(-1).unique().numel() == 1  # what MT5ForSequenceClassification needs
    with torch.no_grad():
        fused = _output(head, fm(**t, **source_kwargs(s)))
        with fm.fusion_disabled():
            plain = _output(head, fm(**t, **source_kwargs(s)))
    assert not torch.allclose(fused, plain, atol=1e-4)

    fm.train()
    site = fm.plan.sites[0]
    grads = []
    for source in (s, batches(tok, source=OTHER_SOURCE)[1]):  # only the source changes
        fm.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        fm(**t, **source_kwargs(source), **_labels(head)).loss.backward()
        grads.append(site.layer.lora_A["default"].weight.grad.clone())
    assert torch.isfinite(grads[0]).all()
    assert not torch.allclose(grads[0], grads[1]), "A's gradient must flow through A(x_S)"


@pytest.mark.parametrize("head", list(HEADS))
def test_a_training_step_runs_fuses_every_site_and_moves_the_head(tiny_path, head):
    fm, tok = _load(tiny_path, head)
    randomize_lora(fm, scale=0.2)
    fm.train()
    t, s = batches(tok)
    trainable = [p for p in fm.parameters() if p.requires_grad]
    before = {n: p.detach().clone() for n, p in fm.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(trainable, lr=1e-2)
    losses = []
    for _ in range(5):
        with fm.require_fusion():
            loss = fm(**t, **source_kwargs(s), **_labels(head)).loss
            loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0], losses
    moved = {n for n, p in fm.named_parameters() if p.requires_grad and not torch.equal(p, before[n])}
    head_name = HEADS[head][3]
    assert any(head_name in n for n in moved) and any("lora_A" in n for n in moved)


@pytest.mark.parametrize("head", list(HEADS))
def test_save_load_round_trip_keeps_the_trained_head(tiny_path, tmp_path, head):
    from flare_ray.fusion import FlareModel

    fm, tok = _load(tiny_path, head, "cross_attention")
    randomize_lora(fm, scale=0.2)
    with torch.no_grad():
        for name, p in fm.named_parameters():
            if HEADS[head][3] in name and p.requires_grad:
                p.add_(1.0)  # as if trained: the loaded model must not fall back to a random head
    fm.eval()
    t, s = batches(tok)
    with torch.no_grad():
        expected = _output(head, fm(**t, **source_kwargs(s)))
    fm.save_pretrained(tmp_path)
    auto, kwargs, _, _ = HEADS[head]
    torch.manual_seed(123)  # another random head
    loaded = FlareModel.from_pretrained(auto.from_pretrained(tiny_path("mt5"), **kwargs), tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(_output(head, loaded(**t, **source_kwargs(s))), expected)

"""X-Mixup as its authors built it (github yhy1117/X-Mixup), each piece against a hand computation on a tiny model:
the pair entropy, the mixing inside the chosen block's attention sub-layer with the block's own attention
(post-LN XLM-R, pre-LN mT5), the losses, the QA source span loss (alpha 0.2), and the scheduled source
(gold English or the back-translation).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from flare_ray.baselines import XMixupConfig, XMixupModel
from flare_ray.baselines.xmixup import pair_entropy
from flare_ray.experiment.config import MethodSpec
from flare_ray.models.loading import load_model
from flare_ray.tasks import TaskConfig, get_task
from flare_ray.tasks.encoding import TaskEncoder
from flare_ray.training.adapter import build_adapter


def nusax():
    return get_task(TaskConfig(name="nusax", language="jav", max_records={"train": 16, "test": 12}))


def tydiqa():
    return get_task(TaskConfig(name="tydiqa", language="sw", max_records={"train": 4}))


def mixup_model(name: str, task, **options) -> tuple[XMixupModel, object]:
    torch.manual_seed(0)
    family = "encoder_decoder" if name == "tiny:mt5" else "encoder"
    model, tok = load_model(name, family, labels=task.labels, head="task" if family == "encoder_decoder" else None)
    method = MethodSpec(kind="xmixup", lora={"r": 4}, xmixup=XMixupConfig(**options))
    mixup = build_adapter(model, method)
    with torch.no_grad():  # LoRA B starts at zero: make the adapters count in the hand computation too
        for name_, p in mixup.named_parameters():
            if "lora_B" in name_:
                p.normal_(0, 0.05)
    return mixup, tok


def batch(task, tok, family="encoder", n=4, length=32, **kwargs):
    return (
        TaskEncoder(task, tok, family, length, source=True, **kwargs).train_batch(list(task.load("train"))[:n]).inputs
    )


# -- the pair entropy ----------------------------------------------------------------------------------
def test_pair_entropy_is_the_authors_formula_by_hand():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 4, 5)  # [batch, heads, target, source]
    target_mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    source_mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])

    def entropy(s, key_mask):  # get_attention_entropy, one number at a time
        b, h, q, k = s.shape
        out = []
        for i in range(b):
            total = 0.0
            for j in range(h):
                for r in range(q):
                    row = [float(s[i, j, r, c]) for c in range(k)]
                    m = [float(key_mask[i, c]) for c in range(k)]
                    soft = [math.exp(x + (1 - mc) * -10000.0) for x, mc in zip(row, m)]
                    soft = [x / sum(soft) for x in soft]
                    masked = [x * mc for x, mc in zip(row, m)]
                    log_z = math.log(sum(math.exp(x) for x in masked))
                    total += -sum(p * (x - log_z) for p, x in zip(soft, masked))
            out.append(total / (h * q))
        return torch.tensor(out)

    expected = entropy(scores, source_mask) + entropy(scores.transpose(-1, -2), target_mask)
    assert torch.allclose(pair_entropy(scores, target_mask, source_mask), expected, atol=1e-5)


# -- the mixing: the block's own attention, inside the attention sub-layer ----------------------------------
def _sublayer_outputs(mixup: XMixupModel, inputs: dict) -> torch.Tensor:
    """The chosen block's attention sub-layer output of one plain (unmixed) pass."""
    kept = {}
    handle = mixup.sublayer.module.register_forward_hook(lambda m, a, out: kept.update(h=out[0]))
    try:
        mixup.peft_model(**inputs)
    finally:
        handle.remove()
    return kept["h"]


def _feed_forward_input(mixup: XMixupModel, inputs: dict, name: str) -> torch.Tensor:
    """What the chosen block's feed-forward sub-layer reads in a mixed pass."""
    block = mixup.blocks[mixup.layer]
    feed_forward = block.intermediate if name != "tiny:mt5" else block.layer[1]
    kept = {}
    handle = feed_forward.register_forward_pre_hook(lambda m, args: kept.update(h=args[0]))
    try:
        mixup(**inputs)
    finally:
        handle.remove()
    return kept["h"]


@pytest.mark.parametrize("name", ["tiny:xlm-roberta", "tiny:mt5"])
def test_the_target_is_mixed_inside_the_attention_sublayer_with_the_blocks_own_attention(name):
    task = nusax()
    mixup, tok = mixup_model(name, task, layer=1)
    mixup.eval()
    family = "encoder_decoder" if name == "tiny:mt5" else "encoder"
    inputs = batch(task, tok, family)
    target = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    source = {"input_ids": inputs["source_input_ids"], "attention_mask": inputs["source_attention_mask"]}
    t_mask, s_mask = target["attention_mask"], source["attention_mask"]
    with torch.no_grad():
        h_t, h_s = _sublayer_outputs(mixup, target), _sublayer_outputs(mixup, source)  # before the mix: unmixed
        block = mixup.blocks[1]
        if name == "tiny:mt5":
            attention, norm = block.layer[0].SelfAttention, block.layer[0].layer_norm
            heads, scale = attention.n_heads, 1.0
            q, k, v = attention.q(norm(h_t)), attention.k(norm(h_s)), attention.v(norm(h_s))
        else:
            attention = block.attention.self
            heads, scale = attention.num_attention_heads, attention.attention_head_size**-0.5
            q, k, v = attention.query(h_t), attention.key(h_s), attention.value(h_s)
        split = lambda x: x.view(x.shape[0], x.shape[1], heads, -1).transpose(1, 2)  # noqa: E731
        scores = split(q) @ split(k).transpose(-1, -2) * scale
        lam = 0.5 * torch.sigmoid(1.0 * pair_entropy(scores, t_mask, s_mask) + 0.0)  # w 1, b 0 at the start
        weights = torch.softmax(scores.masked_fill(~s_mask.bool()[:, None, None, :], float("-inf")), -1)
        context = (weights @ split(v)).transpose(1, 2).flatten(2)
        lam3 = lam.view(-1, 1, 1)
        if name == "tiny:mt5":
            expected = lam3 * attention.o(context) + (1 - lam3) * h_t
        else:
            expected = block.attention.output.LayerNorm(lam3 * block.attention.output.dense(context) + (1 - lam3) * h_t)
        mixed = _feed_forward_input(mixup, inputs, name)
    assert torch.allclose(mixed, expected, atol=1e-5)
    assert not torch.allclose(mixed, h_t, atol=1e-3)  # the source changed the target
    assert set(mixup.mixup_state_dict()) == {"gate.weight", "gate.bias"}  # no new attention: only the gate


def test_losses_are_the_authors_terms_and_reach_the_gate_and_the_lora():
    task = nusax()
    mixup, tok = mixup_model("tiny:xlm-roberta", task, layer=1)
    mixup.train()
    for module in mixup.modules():  # no dropout: the terms can be recomputed
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = batch(task, tok)
    out = mixup(**inputs)
    with torch.no_grad():
        src = mixup.peft_model(input_ids=inputs["source_input_ids"], attention_mask=inputs["source_attention_mask"])
    labels = inputs["labels"]
    task_loss = 0.4 * F.cross_entropy(src.logits, labels) + 0.6 * F.cross_entropy(out.logits.detach(), labels)
    kl = F.kl_div(
        F.log_softmax(out.logits.detach(), -1), F.log_softmax(src.logits, -1), log_target=True, reduction="batchmean"
    )
    assert torch.allclose(mixup.losses["task"], task_loss, atol=1e-5)
    assert torch.allclose(mixup.losses["kl"], kl, atol=1e-5)
    assert torch.allclose(out.loss.detach(), task_loss + kl + mixup.losses["mse"], atol=1e-5)
    out.loss.backward()
    assert mixup.gate.weight.grad is not None and mixup.gate.weight.grad.abs().item() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in mixup.named_parameters() if "lora_A" in n)
    mixup.eval()  # at test time: the mean of the source's and the mixed target's logits
    with torch.no_grad():
        both = mixup(**inputs).logits
        src = mixup.peft_model(input_ids=inputs["source_input_ids"], attention_mask=inputs["source_attention_mask"])
        target_only = mixup.peft_model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    assert not torch.allclose(both, (src.logits + target_only) / 2)  # the target half is mixed


def test_qa_adds_the_english_span_loss_with_alpha_0_2():
    task = tydiqa()
    mixup, tok = mixup_model("tiny:xlm-roberta", task)
    mixup.train()
    for module in mixup.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    inputs = batch(task, tok, length=384, xmixup=True)
    assert {"source_start_positions", "source_end_positions"} <= set(inputs)
    out = mixup(**inputs)
    with torch.no_grad():
        src = mixup.peft_model(input_ids=inputs["source_input_ids"], attention_mask=inputs["source_attention_mask"])

    def span(o, s, e):
        return (F.cross_entropy(o.start_logits, s) + F.cross_entropy(o.end_logits, e)) / 2

    target = span(out, inputs["start_positions"], inputs["end_positions"]).detach()
    english = span(src, inputs["source_start_positions"], inputs["source_end_positions"])
    assert torch.allclose(mixup.losses["task"], 0.2 * english + 0.8 * target, atol=1e-5)
    # the English spans point at the English answers
    for i, record in enumerate(list(task.load("train"))[:4]):
        start, end = inputs["source_start_positions"][i], inputs["source_end_positions"][i]
        assert 0 < start <= end
        assert (
            tok.decode(inputs["source_input_ids"][i, start : end + 1]).strip()
            == record["source_answers"][0]["text"].strip()
        )


def test_the_source_is_scheduled_between_the_gold_english_and_the_back_translation():
    task = nusax()
    mixup, tok = mixup_model("tiny:xlm-roberta", task, layer=1, schedule_k=2.0, seed=3)
    records = [{**r, "back_translation_text": r["target_text"][::-1]} for r in list(task.load("train"))[:4]]
    inputs = TaskEncoder(task, tok, "encoder", 32, source=True, xmixup=True).train_batch(records).inputs
    assert "back_translation_input_ids" in inputs
    draws = torch.Generator().manual_seed(3)
    mixup.train()
    used, expected, read = [], [], []
    source_pass = mixup._source_pass
    mixup._source_pass = lambda source: (read.append(source["input_ids"]), source_pass(source))[1]
    for step in range(12):
        u = torch.rand((), generator=draws).item()
        expected.append(u <= 2.0 / (2.0 + math.exp(step / 2.0)))
        mixup(**inputs)
        used.append(bool(mixup.losses["gold_source"]))
    assert used == expected and True in used and False in used  # k / (k + exp(t / k)): gold first, then mostly not
    for gold, ids in zip(used, read):  # the source pass read the side the schedule chose
        assert torch.equal(ids, inputs["source_input_ids" if gold else "back_translation_input_ids"])
    assert not torch.equal(inputs["source_input_ids"], inputs["back_translation_input_ids"])
    del mixup._source_pass
    mixup.eval()
    mixup(**inputs)
    assert bool(mixup.losses["gold_source"])  # at inference: the source the test set has


def test_adapters_of_the_earlier_version_are_refused(tmp_path):
    task = nusax()
    mixup, _ = mixup_model("tiny:xlm-roberta", task)
    mixup.save_pretrained(tmp_path)
    from safetensors.torch import save_file

    save_file(
        {"cross_attention.in_proj_weight": torch.zeros(2, 2), "gate.weight": torch.ones(1, 1)},
        tmp_path / "xmixup_model.safetensors",
    )
    with pytest.raises(ValueError, match="earlier version"):
        XMixupModel.from_pretrained(load_model("tiny:xlm-roberta", "encoder", labels=task.labels)[0], tmp_path)


# -- decoders (the paper reports X-Mixup for Llama and Gemma without saying how: this project's variant) ------
def decoder_mixup(name: str, task, **options):
    torch.manual_seed(0)
    model, tok = load_model(name, "decoder", labels=task.labels)
    mixup = build_adapter(model, MethodSpec(kind="xmixup", lora={"r": 4}, xmixup=XMixupConfig(**options)))
    with torch.no_grad():
        for n, p in mixup.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return mixup, tok


def _residual_after_attention(mixup, block, inputs: dict, mixed: bool) -> tuple[torch.Tensor, dict]:
    """The residual stream after the attention sub-layer of ``block`` (what the feed-forward norm reads), and the
    block's rotary positions."""
    norm = (
        block.pre_feedforward_layernorm
        if hasattr(block, "pre_feedforward_layernorm")
        else block.post_attention_layernorm
    )
    kept = {}
    handles = [
        norm.register_forward_pre_hook(lambda m, args: kept.update(h=args[0])),
        block.register_forward_pre_hook(
            lambda m, a, kw: kept.update(rotary=kw["position_embeddings"]), with_kwargs=True
        ),
    ]
    try:
        (mixup if mixed else mixup.peft_model)(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return kept["h"], kept


@pytest.mark.parametrize("name", ["tiny:llama", "tiny:gemma2"])
def test_decoders_mix_the_prompt_inside_the_attention_sublayer_by_hand(name):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv

    task = nusax()
    mixup, tok = decoder_mixup(name, task, layer=1)
    mixup.eval()
    inputs = TaskEncoder(task, tok, "decoder", 48, source=True).train_batch(list(task.load("train"))[:3]).inputs
    target = {k: inputs[k] for k in ("input_ids", "attention_mask", "labels")}
    source = {"input_ids": inputs["source_input_ids"], "attention_mask": inputs["source_attention_mask"]}
    block = mixup.blocks[1]
    attention, norm = block.self_attn, block.input_layernorm
    post = block.post_attention_layernorm if hasattr(block, "pre_feedforward_layernorm") else (lambda x: x)
    with torch.no_grad():
        h_t, t = _residual_after_attention(mixup, block, target, mixed=False)
        h_s, s = _residual_after_attention(mixup, block, source, mixed=False)
        split = lambda x: x.view(x.shape[0], x.shape[1], -1, attention.head_dim).transpose(1, 2)  # noqa: E731
        q, k, v = (
            split(attention.q_proj(norm(h_t))),
            split(attention.k_proj(norm(h_s))),
            split(attention.v_proj(norm(h_s))),
        )
        q, _ = apply_rotary_pos_emb(q, q, *t["rotary"])
        k, _ = apply_rotary_pos_emb(k, k, *s["rotary"])
        k, v = repeat_kv(k, attention.num_key_value_groups), repeat_kv(v, attention.num_key_value_groups)
        scores = q @ k.transpose(-1, -2) * attention.scaling
        cap = getattr(attention.config, "attn_logit_softcapping", None)
        if cap:
            scores = torch.tanh(scores / cap) * cap
        prompt = target["attention_mask"].bool() & (target["labels"] == -100)
        s_mask = source["attention_mask"]
        lam = 0.5 * torch.sigmoid(pair_entropy(scores, prompt, s_mask, queries_only=True)).view(-1, 1, 1)
        weights = torch.softmax(scores.masked_fill(~s_mask.bool()[:, None, None, :], float("-inf")), -1)
        attended = post(attention.o_proj((weights @ v).transpose(1, 2).flatten(2)))
        expected = torch.where(prompt.unsqueeze(-1), lam * attended + (1 - lam) * h_t, h_t)
        mixed, _ = _residual_after_attention(mixup, block, inputs, mixed=True)
    assert prompt.any() and (~prompt).any()
    assert torch.allclose(mixed, expected, atol=1e-5)
    assert not torch.allclose(mixed[prompt], h_t[prompt], atol=1e-4)  # the prompt mixed
    assert torch.equal(mixed[~prompt], h_t[~prompt])  # the answer and the padding did not


def test_decoders_train_on_the_answer_and_the_prompt_consistency_and_mix_at_prefill_only():
    task = nusax()
    mixup, tok = decoder_mixup("tiny:llama", task, layer=1)
    mixup.train()
    inputs = TaskEncoder(task, tok, "decoder", 48, source=True).train_batch(list(task.load("train"))[:3]).inputs
    out = mixup(**inputs)
    assert set(mixup.losses) == {"task", "mse", "ratio", "gold_source"}
    assert torch.allclose(out.loss.detach(), mixup.losses["task"] + mixup.losses["mse"])
    out.loss.backward()
    assert mixup.gate.weight.grad.abs().item() > 0
    mixup.eval()
    prompts = TaskEncoder(task, tok, "decoder", 48, source=True).predict_batch(list(task.load("test"))[:2]).inputs
    widths, mix = [], mixup.mix

    def counted(h_t, target, mask, source):
        widths.append((h_t.shape[1], int(mask.sum())))
        return mix(h_t, target, mask, source)

    mixup.mix = counted
    prompt_length, real = prompts["input_ids"].shape[1], int(prompts["attention_mask"].sum())
    mixup.generate(**prompts, max_new_tokens=3, do_sample=False)
    assert widths == [(prompt_length, real)]  # with the KV cache: the prefill mixes, the steps do not
    widths.clear()
    mixup.generate(**prompts, max_new_tokens=3, do_sample=False, use_cache=False)
    assert [w for w, _ in widths] == [prompt_length, prompt_length + 1, prompt_length + 2]
    assert {m for _, m in widths} == {real}  # without it every step recomputes, and mixes the prompt alone


def test_an_xmixup_adapter_saves_and_loads(tmp_path):
    task = nusax()
    mixup, tok = mixup_model("tiny:xlm-roberta", task)
    with torch.no_grad():
        mixup.gate.bias.fill_(0.3)
    mixup.eval()
    inputs = batch(task, tok)
    with torch.no_grad():
        mixed = mixup(**inputs).logits
    mixup.save_pretrained(tmp_path)
    again = XMixupModel.from_pretrained(
        load_model("tiny:xlm-roberta", "encoder", labels=task.labels)[0], tmp_path
    ).eval()
    with torch.no_grad():
        assert torch.allclose(again(**inputs).logits, mixed, atol=1e-6)
    assert float(again.gate.bias) == pytest.approx(0.3) and not any(p.requires_grad for p in again.parameters())


@pytest.mark.parametrize(
    "name,family,task_name", [("tiny:llama", "decoder", "nusax"), ("tiny:mt5", "encoder_decoder", "tydiqa")]
)
def test_xmixup_trains_a_step_and_predicts_with_qlora_and_gradient_checkpointing_or_mt5_spans(name, family, task_name):
    """A decoder in 4 bit with gradient checkpointing (the paper's decoder recipe): the mixing block runs once,
    not again in backward; mT5's span head on TyDiQA: the English span loss. Both predict through the encoder."""
    task = (
        nusax() if task_name == "nusax" else get_task(TaskConfig(name="tydiqa", language="sw", max_records={"test": 4}))
    )
    if family == "decoder":
        model, tok = load_model(name, family, labels=task.labels, quantization="4bit", gradient_checkpointing=True)
    else:
        model, tok = load_model(name, family, labels=task.labels, head="task")
    mixup = build_adapter(model, MethodSpec(kind="xmixup", lora={"r": 4}, xmixup=XMixupConfig(layer=1)))
    encoder = TaskEncoder(task, tok, family, 96, source=True, generative=family == "decoder", xmixup=True)
    records = list(task.load("test"))[:4]
    mixup.train()
    out = mixup(**encoder.train_batch(records).inputs)
    out.loss.backward()
    assert torch.isfinite(out.loss) and mixup.gate.weight.grad is not None
    assert ("task" in mixup.losses) and float(mixup.losses["ratio"]) > 0
    predictions = encoder.predict(mixup.eval(), records, batch_size=2, max_new_tokens=4)
    assert len(predictions) == len(records)


def test_xmixup_refuses_mt5_with_a_generative_head():
    model, _ = load_model("tiny:mt5", "encoder_decoder", labels=None, head="generative")
    with pytest.raises(ValueError, match="model.head: task"):
        build_adapter(model, MethodSpec(kind="xmixup", lora={"r": 4}))

"""FLARE reduces exactly to the frozen model (B = 0) and to peft's plain LoRA (no source, or
fusion off); source padding never reaches the fusion; unselected layers stay plain LoRA."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model

from flare_ray.fusion import default_task_type
from tests.helpers import FAMILIES, FUSIONS, batches, flare, load_base, randomize_lora, source_kwargs


def logits(out):
    return out.logits


def target_kwargs(family, tok, t):
    kwargs = dict(t)
    if family == "encoder_decoder":
        kwargs["decoder_input_ids"] = torch.zeros((t.input_ids.shape[0], 3), dtype=torch.long)
    return kwargs


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("fusion", FUSIONS)
def test_zero_up_projection_equals_frozen_model(tiny_path, family, fusion):
    fm, tok = flare(tiny_path, family, fusion=fusion)
    t, s = batches(tok)
    with torch.no_grad():
        fused = fm(**target_kwargs(family, tok, t), **source_kwargs(s))
        with fm.peft_model.disable_adapter():
            frozen = fm.peft_model(**target_kwargs(family, tok, t))
    assert torch.equal(logits(fused), logits(frozen))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_without_source_or_with_fusion_off_it_is_peft_plain_lora(tiny_path, family):
    fm, tok = flare(tiny_path, family, fusion="cross_attention")
    randomize_lora(fm)
    t, s = batches(tok)
    # an independent plain-LoRA peft model with the same weights
    base, _ = load_base(tiny_path, family)
    plain = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, task_type=default_task_type(base)))
    plain.load_state_dict(fm.peft_model.state_dict())
    plain.eval()
    with torch.no_grad():
        expected = logits(plain(**target_kwargs(family, tok, t)))
        no_source = logits(fm(**target_kwargs(family, tok, t)))
        with fm.fusion_disabled():
            switched_off = logits(fm(**target_kwargs(family, tok, t), **source_kwargs(s)))
        fused = logits(fm(**target_kwargs(family, tok, t), **source_kwargs(s)))
    assert torch.equal(no_source, expected)
    assert torch.equal(switched_off, expected)
    assert not torch.allclose(fused, expected, atol=1e-4)


def _pad_variants(tok, s):
    """The same source sentences with other pad tokens and more padding, on the tokenizer's side."""
    ids, mask = s.input_ids, s.attention_mask
    extra = 4
    pad = torch.full((ids.shape[0], extra), tok.pad_token_id)
    zeros = torch.zeros((ids.shape[0], extra), dtype=mask.dtype)
    if tok.padding_side == "left":
        longer = torch.cat([pad, ids], 1), torch.cat([zeros, mask], 1)
    else:
        longer = torch.cat([ids, pad], 1), torch.cat([mask, zeros], 1)
    garbage = longer[0].clone()
    garbage[longer[1] == 0] = 7  # any real token id at the pad positions
    return [longer, (garbage, longer[1])]


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder", "decoder"])
@pytest.mark.parametrize("fusion", ["add_relu", "cross_attention"])
def test_source_padding_does_not_change_the_output(tiny_path, family, fusion):
    fm, tok = flare(tiny_path, family, fusion=fusion)
    randomize_lora(fm)
    fm.double()  # float64, so that the float noise of other padded shapes cannot hide a leak
    t, s = batches(tok)
    assert (s.attention_mask == 0).any(), "the test needs a padded source"
    with torch.no_grad():
        reference = logits(fm(**target_kwargs(family, tok, t), **source_kwargs(s)))
        for ids, mask in _pad_variants(tok, s):
            out = logits(fm(**target_kwargs(family, tok, t), source_input_ids=ids, source_attention_mask=mask))
            torch.testing.assert_close(out, reference, rtol=1e-9, atol=1e-9 * reference.abs().max().item())


def test_decoder_aligns_left_padded_prompts_by_their_first_real_token(tiny_path):
    """Llama pads prompts on the left: the k-th prompt token meets the k-th source prompt token."""
    fm, tok = flare(tiny_path, "decoder")
    assert tok.padding_side == "left"
    t, s = batches(tok, target=["Saya suka", "Pelayanan lambat dan mahal sekali"], source=["I like it", "So"])
    from flare_ray.fusion import align

    a = align(t.attention_mask, t.attention_mask, s.attention_mask)
    for row in range(2):
        real_t = t.attention_mask[row].nonzero().flatten()
        real_s = s.attention_mask[row].nonzero().flatten()
        n = min(len(real_t), len(real_s))
        assert a.index[row, real_t[:n]].tolist() == real_s[:n].tolist()
        assert a.fuse[row].nonzero().flatten().tolist() == real_t[:n].tolist()


def test_encoder_aligns_right_padded_positions_one_to_one(tiny_path):
    fm, tok = flare(tiny_path, "encoder")
    assert tok.padding_side == "right"
    t, s = batches(tok)
    from flare_ray.fusion import align

    a = align(t.attention_mask, t.attention_mask, s.attention_mask)
    both = (
        t.attention_mask.bool()[:, : s.attention_mask.shape[1]]
        & s.attention_mask.bool()[:, : t.attention_mask.shape[1]]
    )
    n = both.shape[1]
    assert torch.equal(a.fuse[:, :n], both)
    cols = torch.arange(n).expand_as(both)
    assert torch.equal(a.index[:, :n][both], cols[both])


def _module_io(fm, modules):
    seen = {}
    hooks = [
        m.register_forward_hook(lambda mod, args, out, n=n: seen.__setitem__(n, (args[0], out))) for n, m in modules
    ]
    return seen, hooks


def _plain_lora(layer, x):
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    return layer.base_layer(x) + (x @ A.T @ B.T) * layer.scaling["default"]


def test_unselected_layers_and_unfused_modules_are_plain_lora(tiny_path):
    fm, tok = flare(
        tiny_path,
        "decoder",
        fusion="add",
        fusion_layers="lower_half",
        lora=dict(r=8, lora_alpha=16, target_modules="all-linear"),
    )
    randomize_lora(fm)
    assert sorted({s.block for s in fm.plan.sites}) == [0, 1]
    assert {s.name.rsplit(".", 1)[-1] for s in fm.plan.sites} == {"q_proj", "v_proj"}
    fused_names = {s.name for s in fm.plan.sites}
    from peft.tuners.lora import LoraLayer

    base = fm.peft_model.get_base_model()
    layers = [(n, m) for n, m in base.named_modules() if isinstance(m, LoraLayer)]
    assert len(layers) > len(fused_names)
    seen, hooks = _module_io(fm, layers)
    t, s = batches(tok)
    with torch.no_grad():
        fm(**t, **source_kwargs(s))
        for h in hooks:
            h.remove()
        for name, layer in layers:
            x, out = seen[name]
            plain = _plain_lora(layer, x)
            if name in fused_names:
                assert not torch.allclose(out, plain, atol=1e-4), name
            else:
                torch.testing.assert_close(out, plain, rtol=1e-6, atol=1e-6, msg=name)

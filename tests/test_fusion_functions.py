"""Each fusion function, inside a real model, equals ``W x_T + B(f(A x_S, A x_T)) * alpha / r``."""

from __future__ import annotations

import math

import pytest
import torch

from flare_ray.fusion import FUSION_FUNCTIONS, FlareConfig, register_fusion
from flare_ray.fusion.functions import FusionFunction

from .helpers import FUSIONS, flare, randomize_lora


def hand_fusion(name, fusion_module, a_s, a_t, source_mask):
    if name == "add":
        return a_s + a_t
    if name == "mul":
        return a_s * a_t
    if name == "add_relu":
        return torch.clamp(a_s, min=0) + torch.clamp(a_t, min=0)
    # cross-attention, one head, target as query, source padding masked out
    q = a_t @ fusion_module.q.weight.T
    k = a_s @ fusion_module.k.weight.T
    v = a_s @ fusion_module.v.weight.T
    scores = q @ k.transpose(-1, -2) / math.sqrt(a_t.shape[-1])
    scores = scores.masked_fill(~source_mask[:, None, :].bool(), float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def test_registry_holds_the_paper_functions():
    assert set(FUSIONS) <= set(FUSION_FUNCTIONS)
    assert FUSION_FUNCTIONS["cross_attention"].positional is False


@pytest.mark.parametrize("fusion", FUSIONS)
def test_fused_module_output_matches_hand_computation(tiny_path, fusion):
    fm, tok = flare(tiny_path, "encoder", fusion=fusion, lora=dict(r=4, lora_alpha=8))
    randomize_lora(fm)
    site = fm.plan.sites[2]  # block 1, query: a module in the middle of the model
    layer = site.layer
    seen = {}
    handle = layer.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    # same length, no padding on either side: position j meets position j
    t = tok(["Saya suka makanan ini"], return_tensors="pt")
    s = tok(["I like this food here"], return_tensors="pt")
    n = min(t.input_ids.shape[1], s.input_ids.shape[1])
    t = {k: v[:, :n] for k, v in t.items()}
    s = {k: v[:, :n] for k, v in s.items()}
    source = fm.source_states(s["input_ids"], s["attention_mask"])
    with torch.no_grad():
        fm(**t, source_states=source)
    handle.remove()

    x_t, x_s = seen["x"], source.for_site(site.name)
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    W, bias = layer.base_layer.weight, layer.base_layer.bias
    h = hand_fusion(fusion, fm.fusions[site.name.replace(".", "__")], x_s @ A.T, x_t @ A.T, s["attention_mask"])
    expected = x_t @ W.T + bias + (h @ B.T) * (8 / 4)
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)
    plain = x_t @ W.T + bias + (x_t @ A.T @ B.T) * 2
    assert not torch.allclose(seen["out"], plain, atol=1e-3), "fusion must change the module output"


def test_cross_attention_ignores_padded_keys_and_allows_other_lengths():
    torch.manual_seed(0)
    fn = FUSION_FUNCTIONS["cross_attention"](r=4, heads=2)
    a_t = torch.randn(1, 3, 4)
    a_s = torch.randn(1, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    out = fn(a_s, a_t, mask)
    assert out.shape == (1, 3, 4)
    a_s2 = a_s.clone()
    a_s2[:, 3:] = 100.0  # garbage at padded positions
    torch.testing.assert_close(fn(a_s2, a_t, mask), out)
    torch.testing.assert_close(fn(a_s[:, :3], a_t, mask[:, :3]), out)


def test_heads_must_divide_rank():
    with pytest.raises(ValueError, match="heads"):
        FUSION_FUNCTIONS["cross_attention"](r=6, heads=4)


def test_a_new_fusion_function_is_one_registration(tiny_path):
    @register_fusion("test_max")
    class Max(FusionFunction):
        def forward(self, a_s, a_t, source_mask):
            return torch.maximum(a_s, a_t)

    try:
        fm, tok = flare(tiny_path, "encoder", fusion="test_max")
        assert all(type(f) is Max for f in fm.fusions.values())
    finally:
        FUSION_FUNCTIONS.pop("test_max")
    with pytest.raises(ValueError, match="unknown fusion function 'test_max'"):
        FlareConfig(fusion="test_max")

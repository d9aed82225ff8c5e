"""Each fusion function, inside a real model, equals ``W x_T + B(f(A x_S, A x_T)) * alpha / r``;
cross-attention in both orientations equals an explicit softmax; target positions without an
aligned source token fuse a zero source (``unaligned="fuse_zero"``) or stay plain LoRA."""

from __future__ import annotations

import math

import pytest
import torch

from flare_ray.fusion import FUSION_FUNCTIONS, FlareConfig, register_fusion
from flare_ray.fusion.functions import FusionFunction
from tests.helpers import FUSIONS, flare, randomize_lora


def hand_fusion(name, fusion_module, a_s, a_t, source_mask):
    """Same length, no padding: position j meets position j."""
    if name == "add":
        return a_s + a_t
    if name == "mul":
        return a_s * a_t
    if name == "add_relu":
        return torch.clamp(a_s, min=0) + torch.clamp(a_t, min=0)
    # cross-attention, one head; the paper's orientation: the source queries, the target gives K and V
    q = a_s @ fusion_module.q.weight.T
    k = a_t @ fusion_module.k.weight.T
    v = a_t @ fusion_module.v.weight.T
    scores = q @ k.transpose(-1, -2) / math.sqrt(a_t.shape[-1])
    return torch.softmax(scores, dim=-1) @ v


def test_registry_holds_the_paper_functions():
    assert set(FUSIONS) <= set(FUSION_FUNCTIONS)
    cross_attention = FUSION_FUNCTIONS["cross_attention"]
    assert cross_attention(r=4).positional and cross_attention(r=4).query == "source"  # the paper's default
    assert cross_attention(r=4, query="target").positional is False


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
    fn = FUSION_FUNCTIONS["cross_attention"](r=4, heads=2, query="target")
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


def test_source_queried_cross_attention_never_attends_target_padding():
    torch.manual_seed(0)
    fn = FUSION_FUNCTIONS["cross_attention"](r=4, heads=2, query="source")
    a_s = torch.randn(1, 5, 4)  # aligned to the 5 target positions
    a_t = torch.randn(1, 5, 4)
    keys = torch.tensor([[1, 1, 1, 0, 0]])
    out = fn(a_s, a_t, keys)
    a_t2 = a_t.clone()
    a_t2[:, 3:] = 100.0  # garbage at padded target positions
    torch.testing.assert_close(fn(a_s, a_t2, keys)[:, :3], out[:, :3])
    zero_query = fn(torch.zeros_like(a_s), a_t, keys)  # uniform over the real target tokens
    torch.testing.assert_close(zero_query[0, 0], fn.v(a_t[0, :3]).mean(0))


# -- cross-attention against an explicit softmax, padding on both sides -------------------------

PADDED_TARGET = ["Saya suka makanan ini, enak sekali!", "Pelayanan lambat."]
PADDED_SOURCE = ["I like it.", "The service was slow, expensive and bad."]


def _capture_site(fm, tok, target, source, site_index=2):
    """Run the FLARE model on a padded batch; return the site, its input x_T, output, and x_S."""
    site = fm.plan.sites[site_index]
    seen = {}
    handle = site.layer.register_forward_hook(lambda m, args, out: seen.update(x=args[0], out=out))
    t = tok(target, padding=True, return_tensors="pt")
    s = tok(source, padding=True, return_tensors="pt")
    assert not t.attention_mask.all() and not s.attention_mask.all(), "padding on both sides"
    source_states = fm.source_states(s.input_ids, s.attention_mask)
    with torch.no_grad():
        fm(**t, source_states=source_states)
    handle.remove()
    return site, seen["x"], seen["out"], source_states.for_site(site.name), t.attention_mask, s.attention_mask


def explicit_cross_attention(query, unaligned, fusion_module, a_s, a_t, s_mask, t_mask):
    """One head, position by position, softmax written out; returns h (a_t where nothing fuses)."""
    Wq, Wk, Wv = fusion_module.q.weight, fusion_module.k.weight, fusion_module.v.weight
    r = a_t.shape[-1]
    h = a_t.clone()
    for b in range(a_t.shape[0]):
        t_real = t_mask[b].nonzero().flatten().tolist()
        s_real = s_mask[b].nonzero().flatten().tolist()
        for k, j in enumerate(t_real):  # the k-th real target token
            if query == "target":
                q, kv = Wq @ a_t[b, j], a_s[b, s_real]
            elif k < len(s_real):
                q, kv = Wq @ a_s[b, s_real[k]], a_t[b, t_real]  # the k-th real source token queries
            elif unaligned == "lora":
                continue
            else:
                q, kv = torch.zeros(r), a_t[b, t_real]  # a zero source: a zero query
            scores = (kv @ Wk.T) @ q / math.sqrt(r)
            weights = torch.exp(scores - scores.max())
            weights = weights / weights.sum()
            h[b, j] = weights @ (kv @ Wv.T)
    return h


@pytest.mark.parametrize("query,unaligned", [("source", "fuse_zero"), ("source", "lora"), ("target", "fuse_zero")])
def test_cross_attention_matches_explicit_softmax_with_padding(tiny_path, query, unaligned):
    fm, tok = flare(
        tiny_path,
        "encoder",
        fusion="cross_attention",
        lora=dict(r=4, lora_alpha=8),
        cross_attention_query=query,
        unaligned=unaligned,
    )
    randomize_lora(fm)
    site, x_t, out, x_s, t_mask, s_mask = _capture_site(fm, tok, PADDED_TARGET, PADDED_SOURCE)
    n_t, n_s = t_mask.sum(-1), s_mask.sum(-1)
    assert (n_t > n_s).any() and (n_t < n_s).any(), "the test needs unaligned target tokens and extra source tokens"
    layer = site.layer
    A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    h = explicit_cross_attention(
        query, unaligned, fm.fusions[site.name.replace(".", "__")], x_s @ A.T, x_t @ A.T, s_mask, t_mask
    )
    expected = layer.base_layer(x_t) + (h @ B.T) * 2
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_the_two_orientations_differ(tiny_path):
    outs = []
    for query in ("source", "target"):
        fm, tok = flare(tiny_path, "encoder", fusion="cross_attention", cross_attention_query=query)
        randomize_lora(fm)
        outs.append(_capture_site(fm, tok, PADDED_TARGET, PADDED_SOURCE)[2])
    assert not torch.allclose(outs[0], outs[1], atol=1e-4)


# -- unaligned target positions ------------------------------------------------------------------


@pytest.mark.parametrize("fusion", ["add", "mul", "add_relu"])
@pytest.mark.parametrize("unaligned", ["fuse_zero", "lora"])
def test_unaligned_target_positions(tiny_path, fusion, unaligned):
    """Where the target is longer than its source: f(0, a_t) (fuse_zero) or a_t (lora);
    target padding is plain LoRA either way; aligned positions fuse f(a_s, a_t)."""
    fm, tok = flare(tiny_path, "encoder", fusion=fusion, lora=dict(r=4, lora_alpha=8), unaligned=unaligned)
    randomize_lora(fm)
    site = fm.plan.sites[2]
    bottleneck = {}
    handle = site.layer.lora_B["default"].register_forward_hook(lambda m, args, out: bottleneck.update(h=args[0]))
    site, x_t, _, x_s, t_mask, s_mask = _capture_site(fm, tok, PADDED_TARGET, PADDED_SOURCE)
    handle.remove()
    A = site.layer.lora_A["default"].weight
    a_t, a_s, h = x_t @ A.T, x_s @ A.T, bottleneck["h"]
    f = {"add": torch.add, "mul": torch.mul, "add_relu": lambda s, t: s.clamp(min=0) + t.clamp(min=0)}[fusion]
    checked = set()
    for b in range(a_t.shape[0]):
        t_real = t_mask[b].nonzero().flatten().tolist()
        s_real = s_mask[b].nonzero().flatten().tolist()
        for j in range(a_t.shape[1]):
            if j not in t_real:
                expected, kind = a_t[b, j], "target padding"
            elif t_real.index(j) < len(s_real):
                expected, kind = f(a_s[b, s_real[t_real.index(j)]], a_t[b, j]), "aligned"
            elif unaligned == "lora":
                expected, kind = a_t[b, j], "unaligned"
            else:
                expected, kind = f(torch.zeros_like(a_t[b, j]), a_t[b, j]), "unaligned"
            torch.testing.assert_close(h[b, j], expected, rtol=1e-5, atol=1e-5, msg=f"{kind} ({b}, {j})")
            checked.add(kind)
    assert checked == {"target padding", "aligned", "unaligned"}
    if unaligned == "fuse_zero":
        unaligned_rows = [b for b in range(a_t.shape[0]) if t_mask[b].sum() > s_mask[b].sum()]
        b = unaligned_rows[0]
        j = t_mask[b].nonzero().flatten()[-1]  # the last real target token has no source partner
        if fusion == "mul":
            assert torch.equal(h[b, j], torch.zeros_like(h[b, j]))
        if fusion == "add_relu":
            torch.testing.assert_close(h[b, j], a_t[b, j].clamp(min=0))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        # pydantic's location is the field; the experiment schema reports it under method.flare.<key>
        ({"cross_attention_query": "both"}, r"(?s)cross_attention_query\n.*Input should be 'source' or 'target'"),
        ({"unaligned": "skip"}, r"(?s)unaligned\n.*Input should be 'fuse_zero' or 'lora'"),
    ],
)
def test_bad_orientation_or_unaligned_rule_fails_naming_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FlareConfig(**kwargs)


def test_defaults_are_the_papers():
    config = FlareConfig()
    assert config.cross_attention_query == "source" and config.unaligned == "fuse_zero"
    assert {"cross_attention_query", "unaligned"} <= set(config.to_dict())

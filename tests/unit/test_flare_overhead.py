"""FLARE's source branch made cheaper (flare_ray.fusion.branch) computes what the fusion hook computed before:
the source dropout drawn once per step for every site (the dropped elements, not a mask per element) and
FLARE-MT's projection once per forward give the loss and every gradient of the former per-site computation
(the hook below, as it was) given the same dropped elements, for every family, FLARE and FLARE-MT, with and
without the source cache and gradient checkpointing; and the draw drops each element with probability p."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn
from transformers import AutoTokenizer

from flare_ray.fusion import SourceCache, branch
from flare_ray.fusion.branch import down_dropped, draw_dropped
from tests.helpers import FAMILIES, TARGET, batches, flare, randomize_lora, source_kwargs, task_kwargs

P = 0.1
FAMILY_NAMES = [f for f in FAMILIES if f != "decoder_gemma2"]


def injected_one(index, size, p):
    """The dropped elements of the ``index``-th site, from its own seed (not the global random state)."""
    g = torch.Generator().manual_seed(1000 + index)
    return (torch.rand(size, generator=g) < p).nonzero().squeeze(1)


def injected(sizes, p):
    """In place of :func:`draw_dropped` (the sites in the plan's order)."""
    return [injected_one(i, size, p) for i, size in enumerate(sizes)]


def former_fuse(fm, site, _lora_b, args):
    """The fusion hook as it was (per site: the source input, its dropout, ``A``), the dropout given by the
    same dropped elements as :func:`injected` instead of a draw."""
    context = fm._active
    if context is None:
        return None
    (a_t,) = args
    layer, name = site.layer, fm.adapter_name
    x_s = fm.source.site_input(context.states, site).to(layer.lora_A[name].weight.dtype)
    dropout = layer.lora_dropout[name]
    if isinstance(dropout, nn.Dropout) and dropout.training:
        index = [s.name for s in fm.plan.sites].index(site.name)
        keep = torch.ones(x_s.numel())
        keep[injected_one(index, x_s.numel(), dropout.p)] = 0
        x_s = x_s * (keep.view(x_s.shape) / (1 - dropout.p))
    a_s = layer.lora_A[name](x_s).to(a_t.dtype)
    fusion, alignment = fm.fusions[site.name.replace(".", "__")], context.alignment
    if fusion.positional:
        fused = fusion(alignment.gather(a_s), a_t, alignment.rows)
        where = alignment.rows if fm.config.unaligned == "fuse_zero" else alignment.fuse
    else:
        fused = fusion(a_s, a_t, alignment.source_mask)
        where = alignment.rows
    return (torch.where(where.unsqueeze(-1), fused, a_t),)


def step(fm, batch):
    fm.zero_grad(set_to_none=True)
    torch.manual_seed(0)  # the target's dropout: the same in both computations
    loss = fm(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in fm.named_parameters() if p.grad is not None}


def former_step(fm, batch):
    for handle in fm._hooks:
        handle.remove()
    hooks = [
        site.layer.lora_B[fm.adapter_name].register_forward_pre_hook(partial(former_fuse, fm, site))
        for site in fm.plan.sites
    ]
    try:
        return step(fm, batch)
    finally:
        for handle in hooks:
            handle.remove()
        fm._hooks = [
            site.layer.lora_B[fm.adapter_name].register_forward_pre_hook(partial(fm._fuse, site))
            for site in fm.plan.sites
        ]


def assert_same(new, old):
    (loss, grads), (loss_old, grads_old) = new, old
    """The loss within 1e-6 relative, each gradient within 1e-5 of its tensor's largest magnitude (the sums run in
    another order: the product with the whole input less the dropped share)."""
    torch.testing.assert_close(loss, loss_old, rtol=1e-6, atol=0.0)
    assert grads.keys() == grads_old.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        error = (grads[name] - grads_old[name]).abs().max()
        assert error <= 1e-5 * grads_old[name].abs().max(), (name, float(error))


@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("mt", [False, True], ids=["flare", "flare_mt"])
def test_the_step_equals_the_former_per_site_computation(tiny_path, family, mt, monkeypatch):
    monkeypatch.setattr(branch, "draw_dropped", injected)
    extra = {"mt_encoder": str(tiny_path("m2m_100"))} if mt else {}
    fm, tok = flare(tiny_path, family, lora=dict(r=4, lora_alpha=8, lora_dropout=P), **extra)
    randomize_lora(fm, scale=0.05)
    fm.train()
    t, s = batches(tok)
    if mt:
        encoded = AutoTokenizer.from_pretrained(tiny_path("m2m_100"))(TARGET, padding=True, return_tensors="pt")
        source = {"mt_input_ids": encoded.input_ids, "mt_attention_mask": encoded.attention_mask}
    else:
        source = source_kwargs(s)
    batch = {**t, **source, **task_kwargs(family, tok, t)}
    base = fm.peft_model.get_base_model()
    drawn = {}
    real_down = branch.SourceBranch.down

    def counting_down(self, site):
        drawn[site.name] = site.name in self.dropped
        return real_down(self, site)

    monkeypatch.setattr(branch.SourceBranch, "down", counting_down)
    for cached in (False, True):
        fm.cache_source(SourceCache(max_bytes=2**26) if cached else None)
        for checkpointing in (None, {"use_reentrant": True}):
            if checkpointing is not None:
                base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
                base.enable_input_require_grads()
            drawn.clear()
            assert_same(step(fm, batch), former_step(fm, batch))
            assert drawn and all(drawn.values())  # every site read its dropped elements, drawn ahead
            if checkpointing is not None:
                base.gradient_checkpointing_disable()
    for site in fm.plan.sites:  # dropout 0: peft's identity, nothing drawn
        site.layer.lora_dropout[fm.adapter_name] = nn.Identity()
    for checkpointing in (None, {"use_reentrant": True}):
        if checkpointing is not None:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs=checkpointing)
        assert_same(step(fm, batch), former_step(fm, batch))
        assert not any(drawn.values())


def test_flare_mt_projects_once_per_forward_unless_checkpointed(tiny_path):
    mt = str(tiny_path("m2m_100"))
    fm, tok = flare(tiny_path, "encoder", lora=dict(r=4, lora_alpha=8, lora_dropout=0.0), mt_encoder=mt)
    fm.train()
    t, _ = batches(tok)
    encoded = AutoTokenizer.from_pretrained(tiny_path("m2m_100"))(TARGET, padding=True, return_tensors="pt")
    batch = {**t, "mt_input_ids": encoded.input_ids, "mt_attention_mask": encoded.attention_mask}
    batch["labels"] = torch.tensor([0, 2])
    calls = []
    fm.mt_projection.register_forward_hook(lambda *_: calls.append(1))
    step(fm, batch)
    assert len(calls) == 1 and len(fm.plan.sites) > 1
    base = fm.peft_model.get_base_model()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    base.enable_input_require_grads()
    calls.clear()
    step(fm, batch)  # each block projects, and again when it re-runs in backward
    assert len(calls) == 2 * len(fm.plan.sites)


def test_each_element_is_dropped_with_probability_p():
    torch.manual_seed(0)
    sizes = [300_000, 1, 500_000, 200_000]
    for p in (0.05, 0.25):
        dropped = draw_dropped(sizes, p)
        for d, size in zip(dropped, sizes):
            assert (
                d.dtype == torch.int64 and (d.diff() > 0).all() and (d.numel() == 0 or 0 <= d.min() <= d.max() < size)
            )
            sd = (size * p * (1 - p)) ** 0.5
            assert abs(d.numel() - size * p) <= 5 * sd + 1  # the binomial count of dropped elements
        gaps = torch.cat([d.diff() for d in dropped]).double()
        assert abs(gaps.mean().item() - 1 / p) < 0.05 / p  # geometric gaps, mean 1/p
        # each element equally likely: the dropped share of each tenth of a site
        tenths = torch.bincount(dropped[2] * 10 // sizes[2], minlength=10).double() / (sizes[2] / 10)
        assert (tenths - p).abs().max() < 5 * (p * (1 - p) / (sizes[2] / 10)) ** 0.5


def test_down_dropped_is_a_linear_of_the_dropped_input():
    torch.manual_seed(0)
    lora_a = nn.Linear(16, 4, bias=True)
    x = torch.randn(3, 5, 16, requires_grad=True)
    dropped = torch.tensor([0, 7, 16, 100, 239])
    keep = torch.ones(x.numel())
    keep[dropped] = 0
    expected = lora_a.weight @ (x * keep.view(x.shape) / 0.8).unsqueeze(-1)
    got = down_dropped(lora_a, x, dropped, 0.2)
    torch.testing.assert_close(got, expected.squeeze(-1) + lora_a.bias, rtol=1e-6, atol=1e-6)
    got.sum().backward()
    torch.testing.assert_close(x.grad, (lora_a.weight.sum(0) * keep.view(x.shape) / 0.8), rtol=1e-6, atol=1e-6)

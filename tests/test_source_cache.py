"""The source cache (flare_ray.fusion.cache): a FLARE step whose source representations are read back from
the cache gives the loss and gradients of the step that runs the source pass, within half precision, for
every architecture family, every source representation and FLARE-MT; rows are computed once, read back by
the next epoch and by another model on the same base, and never stored past the size limit."""

from __future__ import annotations

import pytest
import torch

from flare_ray.fusion import SourceCache

from .helpers import FAMILIES, TARGET, batches, flare, randomize_lora, source_kwargs, task_kwargs

MiB = 2**20


def step(fm, t, s, labels):
    """Loss and every trainable gradient of one training step (dropout drawn from seed 0)."""
    fm.zero_grad(set_to_none=True)
    torch.manual_seed(0)
    loss = fm(**t, **source_kwargs(s), **labels).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in fm.named_parameters() if p.grad is not None}


def assert_same_step(cached, uncached, tolerance=2e-3):
    """The stated half-precision tolerance: the loss within ``tolerance`` relative, each gradient within
    ``tolerance`` of its tensor's largest magnitude (measured: below 1e-3 for every family, float16)."""
    (loss, grads), (loss_ref, grads_ref) = cached, uncached
    torch.testing.assert_close(loss, loss_ref, rtol=tolerance, atol=0.0)
    assert grads.keys() == grads_ref.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        error = (grads[name] - grads_ref[name]).abs().max()
        assert error <= tolerance * grads_ref[name].abs().max(), (name, float(error))


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("representation", ["next_block_output", "block_input", "module_input"])
def test_a_cached_step_equals_the_uncached_one(tiny_path, family, representation):
    fm, tok = flare(tiny_path, family, fusion="add_relu", source_representation=representation)
    randomize_lora(fm, scale=0.05)
    fm.train()
    t, s = batches(tok)
    labels = task_kwargs(family, tok, t)
    uncached = step(fm, t, s, labels)
    cache = SourceCache(max_bytes=64 * MiB)
    fm.cache_source(cache)
    first = step(fm, t, s, labels)  # computes and stores both rows
    assert (cache.misses, cache.hits, len(cache)) == (2, 0, 2)
    second = step(fm, t, s, labels)  # reads them back: no source pass
    assert (cache.misses, cache.hits) == (2, 2)
    assert_same_step(first, uncached)
    assert_same_step(second, uncached)
    if representation != "module_input":  # the sites of a block share one stored tensor
        assert len(set(cache.layout.values())) == len({site.block for site in fm.plan.sites})
    fm.cache_source(None)
    torch.testing.assert_close(step(fm, t, s, labels)[0], uncached[0])  # off again: the source pass


def test_the_cache_reads_rows_back_in_any_batch_and_padding(tiny_path):
    fm, tok = flare(tiny_path, "decoder", fusion="add")
    randomize_lora(fm, scale=0.05)
    fm.train()
    t, s = batches(tok)
    labels = task_kwargs("decoder", tok, t)
    cache = SourceCache(max_bytes=64 * MiB)
    fm.cache_source(cache)
    step(fm, t, s, labels)
    # the same two sources, in reverse order and padded on the left: both rows are hits
    tok.padding_side = "left"
    reversed_source = tok([*reversed(["I like this food, it is very tasty!", "Slow, expensive."])], padding=True,
                          return_tensors="pt")  # fmt: skip
    flipped = {k: v.flip(0) for k, v in t.items()}
    hit = step(fm, flipped, reversed_source, {"labels": labels["labels"].flip(0)})
    assert (cache.misses, cache.hits) == (2, 2)
    fm.cache_source(None)
    assert_same_step(hit, step(fm, flipped, reversed_source, {"labels": labels["labels"].flip(0)}))


def test_flare_mt_latent_translations_are_cached(tiny_path):
    from transformers import AutoTokenizer

    fm, tok = flare(tiny_path, "encoder", fusion="add", mt_encoder=str(tiny_path("m2m_100")))
    randomize_lora(fm, scale=0.05)
    fm.train()
    t, _ = batches(tok)
    encoded = AutoTokenizer.from_pretrained(tiny_path("m2m_100"))(TARGET, padding=True, return_tensors="pt")
    mt = {"mt_input_ids": encoded.input_ids, "mt_attention_mask": encoded.attention_mask}  # the target, MT-tokenized
    labels = task_kwargs("encoder", tok, t)

    def mt_step():
        fm.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        loss = fm(**t, **mt, **labels).loss
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in fm.named_parameters() if p.grad is not None}

    uncached = mt_step()
    cache = SourceCache(max_bytes=64 * MiB)
    fm.cache_source(cache)
    mt_step()
    cached = mt_step()
    assert (cache.misses, cache.hits) == (2, 2) and cache.layout == {}
    assert any("mt_projection" in n for n in cached[1])  # the projection still trains, after the cache
    assert_same_step(cached, uncached)


def test_a_second_model_on_the_same_base_reads_the_first_ones_rows(tiny_path):
    cache = SourceCache(max_bytes=64 * MiB)
    for seed in (0, 1):  # two trials: different adapters, the same frozen base and fused sites
        fm, tok = flare(tiny_path, "encoder", fusion="mul", seed=seed)
        fm.train()
        fm.cache_source(cache)
        t, s = batches(tok)
        step(fm, t, s, task_kwargs("encoder", tok, t))
    assert (cache.misses, cache.hits) == (2, 2)


def test_past_its_size_limit_the_cache_computes_rows_on_the_fly(tiny_path):
    fm, tok = flare(tiny_path, "encoder", fusion="add")
    fm.train()
    t, s = batches(tok)
    labels = task_kwargs("encoder", tok, t)
    one_row = SourceCache(max_bytes=64 * MiB)
    fm.cache_source(one_row)
    step(fm, t, s, labels)
    row_bytes = one_row.nbytes // 2
    small = SourceCache(max_bytes=row_bytes + row_bytes // 2)  # room for one of the two rows
    fm.cache_source(small)
    first = step(fm, t, s, labels)
    second = step(fm, t, s, labels)
    assert len(small) == 1 and small.full and small.nbytes <= small.max_bytes
    assert (small.misses, small.hits) == (3, 1)  # the row that did not fit is computed again
    assert_same_step(second, first)

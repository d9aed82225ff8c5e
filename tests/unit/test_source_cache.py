"""The source cache (flare_ray.fusion.cache): a FLARE step whose source representations are read back from
the cache gives the loss and gradients of the step that runs the source pass, within half precision, for
every architecture family, every source representation and FLARE-MT; rows are computed once, read back by
the next epoch and by another model on the same base, and never stored past the size limit."""

from __future__ import annotations

import pytest
import torch
from safetensors.numpy import save_file

from flare_ray.fusion import SourceCache
from flare_ray.fusion.provider import SourceBatch
from tests.helpers import FAMILIES, TARGET, batches, flare, randomize_lora, source_kwargs, task_kwargs

MiB = 2**20


def training_setup(tiny_path, family: str, fusion: str, randomize: bool = True, **config):
    """A FLARE model in training mode (its LoRA randomised) and the fixed batch with its labels."""
    fm, tok = flare(tiny_path, family, fusion=fusion, **config)
    if randomize:
        randomize_lora(fm, scale=0.05)
    fm.train()
    t, s = batches(tok)
    return fm, tok, t, s, task_kwargs(family, tok, t)


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
    fm, _, t, s, labels = training_setup(tiny_path, family, "add_relu", source_representation=representation)
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
    fm, tok, t, s, labels = training_setup(tiny_path, "decoder", "add")
    cache = SourceCache(max_bytes=64 * MiB)
    fm.cache_source(cache)
    step(fm, t, s, labels)
    # the same two sources, in reverse order and padded on the left: both rows are hits
    tok.padding_side = "left"
    reversed_source = tok(
        [*reversed(["I like this food, it is very tasty!", "Slow, expensive."])], padding=True, return_tensors="pt"
    )
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
    fm, _, t, s, labels = training_setup(tiny_path, "encoder", "add", randomize=False)
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


def test_a_trial_process_keeps_one_cache_per_model_state(tiny_path, tmp_path):
    """What the training loop attaches: the same cache for the next trial on the same model state (another
    seed, learning rate or fusion function), a new one where the base model, stage 1, the source
    representation, the fused sites or FLARE-MT's encoder change; none for LoRA or with the cache off."""
    from flare_ray.experiment import validate_experiment
    from flare_ray.training.source_cache import attach_source_cache

    def config(**changes):
        data = {
            "name": "c",
            "model": {"name_or_path": "tiny:xlm-roberta", "stage1": None},
            "task": {"name": "nusax", "languages": ["jav"]},
            "storage_path": str(tmp_path),
            "method": {"kind": "flare", "flare": {"fusion": "add"}},
            "training": {"seed": 0},
        }
        for key, value in changes.items():
            section, name = key.split("__")
            data.setdefault(section, {})[name] = value
        return validate_experiment(data)

    model, _ = flare(tiny_path, "encoder", fusion="add")
    first = attach_source_cache(model, config())
    assert first is not None and model.source.cache is first
    assert attach_source_cache(model, config(training__seed=1, training__learning_rate=1e-3)) is first
    assert attach_source_cache(model, config(method__flare={"fusion": "mul"})) is first
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    (stage1 / "adapter_config.json").write_text("{}")
    save_file({}, str(stage1 / "adapter_model.safetensors"))
    changed = [
        config(model__name_or_path="tiny:mt5"),
        config(model__stage1=str(stage1)),
        config(method__flare={"fusion": "add", "source_representation": "block_input"}),
    ]
    for other in changed:
        assert attach_source_cache(model, other) is not first
        assert attach_source_cache(model, config()) is not first  # replaced: one cache per process
        first = attach_source_cache(model, config())
    # a FLARE trial of a grid whose FLARE-MT cells set the MT encoder: the source pass, not FLARE-MT's cache
    with_mt = {"fusion": "add", "mt_encoder": "tiny:m2m_100"}
    assert attach_source_cache(model, config(method__flare=with_mt)) is first
    assert attach_source_cache(model, config(method__flare=with_mt, method__kind="flare_mt")) is not first
    first = attach_source_cache(model, config())
    fewer, _ = flare(tiny_path, "encoder", fusion="add", fusion_layers=[0])  # other fused sites
    assert attach_source_cache(fewer, config()) is not first
    assert attach_source_cache(model, config(training__source_cache_gb=0)) is None
    lora = fewer.peft_model  # a plain LoRA model: nothing to cache
    assert attach_source_cache(lora, config()) is None


def test_saved_rows_are_read_back_by_another_cache_and_give_the_same_step(tiny_path, tmp_path):
    """A cache written to a folder (as the sweep's shared copy is) and opened by a new cache (another
    process's): every row is read from the memory-mapped shards, none computed, and the step equals the
    uncached one within half precision."""
    from flare_ray.fusion import SourceShards

    fm, _, t, s, labels = training_setup(tiny_path, "encoder", "add_relu")
    uncached = step(fm, t, s, labels)
    writer = SourceCache(max_bytes=64 * MiB)
    fm.cache_source(writer)
    step(fm, t, s, labels)
    writer.save(tmp_path / "rows")
    reader = SourceCache(max_bytes=64 * MiB, shards=SourceShards(tmp_path / "rows"))
    fm.cache_source(reader)
    shared = step(fm, t, s, labels)
    assert len(reader.shards) == len(writer) == 2
    assert (reader.hits, reader.misses, len(reader)) == (2, 0, 2)  # read from the shards, then held in memory
    assert_same_step(shared, uncached)
    assert step(fm, t, s, labels) and (reader.hits, reader.misses) == (4, 0)


def test_the_cache_under_bf16_autocast_on_the_cpu(tiny_path):
    """CPU autocast refuses float16 in some kernels: a cached step under bf16 autocast runs, in bf16."""
    fm, _, t, s, labels = training_setup(tiny_path, "decoder", "add_relu")
    fm.cache_source(SourceCache(max_bytes=64 * MiB))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        step(fm, t, s, labels)
        states = fm.source.states(SourceBatch(**source_kwargs(s)))
    assert fm.source.cache.hits == 2 and {h.dtype for h in states.hidden.values()} == {torch.bfloat16}

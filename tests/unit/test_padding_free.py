"""``training.padding_free``: a decoder's training batch flattened (transformers' ``DataCollatorWithFlattening``: the
sequences end to end in one row, position ids restarting per sequence, no attention mask) computes what its padded
form computes: the same loss, the same outputs at the real tokens and the same gradients (1e-5, CPU), for LoRA,
FLARE (source flattened, or padded and read from the source cache) and FLARE-MT (the MT input padded), on the tiny
Llama and Gemma 2; the trial's loader gives those batches in the seeded order with no padding, and configs it does
not fit are refused before anything loads."""

from __future__ import annotations

import pytest
import torch

from flare_ray.experiment import ExperimentConfigError, load_experiment
from flare_ray.experiment.training import TrainingSpec
from flare_ray.fusion import SourceCache
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder, flatten
from flare_ray.training.engine import padding_fraction
from flare_ray.training.setup import train_loader
from tests.helpers import QUICKSTART, flare, randomize_lora


@pytest.fixture(scope="module")
def records():
    """NusaX rows of different lengths (so the padded batch pads), a long one among them."""
    rows = list(get_task({"name": "nusax", "language": "jav"}).load("train"))[:5]
    rows[2] = rows[2] | {k: " ".join([rows[2][k]] * 3) for k in ("target_text", "source_text")}
    return rows


def outputs(fm, inputs: dict, fused: bool = True) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """The loss, the logits at the real target tokens (in order, sequence after sequence) and the gradients of
    every trainable parameter, of one training step on ``inputs``."""
    fm.zero_grad()
    if fused:
        with fm.require_fusion():
            out = fm(**inputs)
    else:
        out = fm(**inputs)
    out.loss.backward()
    logits = out.logits if "attention_mask" not in inputs else out.logits[inputs["attention_mask"].bool()]
    grads = {n: p.grad.clone() for n, p in fm.named_parameters() if p.requires_grad and p.grad is not None}
    return out.loss.detach(), logits.detach().reshape(-1, out.logits.shape[-1]), grads


def assert_same(padded, flat) -> None:
    (loss, logits, grads), (loss_f, logits_f, grads_f) = padded, flat
    torch.testing.assert_close(loss_f, loss, rtol=0, atol=1e-5)
    torch.testing.assert_close(logits_f, logits, rtol=0, atol=1e-5)
    assert grads.keys() == grads_f.keys() and any("lora_A" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads_f[name], grads[name], rtol=0, atol=1e-5, msg=name)


def left_padded(lengths: list[int]) -> torch.Tensor:
    width = max(lengths)
    return torch.tensor([[0] * (width - n) + [1] * n for n in lengths])


@pytest.mark.parametrize(  # a source without tokens: padded only (flatten refuses an empty sequence)
    "source_lengths,flat_source", [([4, 1, 3], True), ([4, 1, 3], False), ([4, 0, 3], False)]
)
def test_a_flattened_target_is_aligned_as_its_padded_rows(source_lengths, flat_source):
    """The k-th token of the i-th target sequence meets the k-th real token of the i-th source sequence, whether
    the source is flattened (position ids) or padded (a mask: FLARE-MT's input, rows from the source cache);
    target tokens past their source's length, or outside the fusion mask, do not fuse."""
    from flare_ray.fusion.alignment import align

    target_lengths = [3, 5, 2]
    target = left_padded(target_lengths).flip(-1)  # right padding, as decoder training rows
    fusing = target.clone()
    fusing[1, 4] = 0  # an answer token
    source = left_padded(source_lengths)
    a_s = torch.randn(*source.shape, 6)
    padded = align(target, fusing, source)
    expected = padded.gather(a_s)[target.bool()]
    positions = torch.tensor([[k for n in target_lengths for k in range(n)]])
    flat_fusing = fusing[target.bool()].unsqueeze(0)
    if flat_source:
        source_positions = torch.tensor([[k for n in source_lengths for k in range(n)]])
        flat_a_s = a_s[source.bool()].unsqueeze(0)
        flat = align(
            torch.ones_like(positions),
            flat_fusing,
            torch.ones_like(source_positions),
            target_positions=positions,
            source_positions=source_positions,
        )
    else:
        flat_a_s = a_s
        flat = align(torch.ones_like(positions), flat_fusing, source, target_positions=positions)
    torch.testing.assert_close(flat.gather(flat_a_s)[0], expected, rtol=0, atol=0)
    assert torch.equal(flat.fuse[0], padded.fuse[target.bool()]) and torch.equal(
        flat.rows[0], padded.rows[target.bool()]
    )
    if source_lengths[1] == 1:  # the second target sequence is longer than its source: 3 tokens left unfused
        assert int(flat.rows.sum()) - int(flat.fuse.sum()) == 3
    with pytest.raises(ValueError, match="2 sequences but the source batch has 3"):
        align(torch.ones(1, 5), torch.ones(1, 5), source, target_positions=torch.tensor([[0, 1, 2, 0, 1]]))


@pytest.mark.parametrize(
    "family,method",
    [
        ("decoder", "lora"),
        ("decoder", "flare"),
        ("decoder_gemma2", "flare"),
        ("decoder", "flare_cached"),
        ("decoder", "flare_mt"),
    ],
)
def test_a_flattened_batch_computes_what_its_padded_form_does(tiny_path, records, family, method):
    from flare_ray.models.loading import load_mt_tokenizer

    mt = str(tiny_path("m2m_100")) if method == "flare_mt" else None
    extra = {"mt_encoder": mt} if mt else {}
    fm, tok = flare(tiny_path, family, fusion="add_relu", lora=dict(r=4, lora_alpha=8, lora_dropout=0.0), **extra)
    randomize_lora(fm, scale=0.2)  # fusion and LoRA change the output
    task = get_task({"name": "nusax", "language": "jav"})
    mt_tokenizer = load_mt_tokenizer(mt, "jav") if mt else None
    source = method in ("flare", "flare_cached")
    encoder = TaskEncoder(task, tok, "decoder", 128, source=source, mt_tokenizer=mt_tokenizer)
    padded = encoder.train_batch(records).inputs
    flat = flatten(padded, source=method == "flare")
    mask = padded["attention_mask"].bool()
    assert "attention_mask" not in flat and flat["input_ids"].shape == (1, int(mask.sum()))
    assert flat["position_ids"][0].tolist() == [k for n in mask.sum(1).tolist() for k in range(n)]
    assert bool((mask.sum(1) < mask.shape[1]).any())  # the padded form pads
    if method == "flare":
        assert flat["source_input_ids"].shape == (1, int(padded["source_attention_mask"].sum()))
        assert "source_attention_mask" not in flat and "source_position_ids" in flat
    elif method == "flare_cached":  # the source stays padded: the cache keys its rows
        assert torch.equal(flat["source_input_ids"], padded["source_input_ids"])
        fm.cache_source(SourceCache(max_bytes=2**30))
        fm.train()(**padded)  # fills the cache: both forms below read the same stored rows
    elif method == "flare_mt":
        assert torch.equal(flat["mt_input_ids"], padded["mt_input_ids"])  # the MT encoder's input stays padded
    fm.train()
    if method == "lora":
        with fm.fusion_disabled():
            assert_same(outputs(fm, padded, fused=False), outputs(fm, flat, fused=False))
        return
    assert_same(outputs(fm, padded), outputs(fm, flat))
    if method == "flare_cached":
        assert fm.source.cache.hits >= 2 * len(records)
    unfused = {k: v for k, v in flat.items() if not k.startswith(("source_", "mt_"))}
    with torch.no_grad():  # the source is fused: without it the flattened output differs
        assert not torch.allclose(fm(**flat).logits, fm(**unfused).logits, atol=1e-3)


def test_fusion_probability_draws_one_choice_a_sequence_as_padded(tiny_path, records):
    fm, tok = flare(tiny_path, "decoder", lora=dict(r=4, lora_alpha=8, lora_dropout=0.0), fusion_probability=0.5)
    randomize_lora(fm, scale=0.2)
    padded = TaskEncoder(get_task({"name": "nusax", "language": "jav"}), tok, "decoder", 128).train_batch(records)
    fm.train()
    torch.manual_seed(3)
    before = outputs(fm, padded.inputs, fused=False)
    torch.manual_seed(3)
    assert_same(before, outputs(fm, flatten(padded.inputs), fused=False))


def test_the_loader_flattens_every_batch_in_the_seeded_order(tiny_path, records):
    from transformers import AutoTokenizer

    task = get_task({"name": "nusax", "language": "jav", "max_records": {"train": 24}})
    rows = list(task.load("train"))
    encoder = TaskEncoder(task, AutoTokenizer.from_pretrained(tiny_path("llama")), "decoder", 128, source=True)
    spec = dict(batch_size=4, seed=7)
    padded = train_loader(rows, encoder, TrainingSpec(**spec), 0, 1)
    flat = train_loader(rows, encoder, TrainingSpec(**spec, padding_free=True, source_cache_gb=0), 0, 1)
    cached = train_loader(rows, encoder, TrainingSpec(**spec, padding_free=True), 0, 1)  # source kept padded
    for loader in (padded, flat, cached):
        loader.sampler.set_epoch(2)
    assert padding_fraction(padded) > 0.05 and padding_fraction(flat) == 0.0
    source_padding = sum(int((b["source_attention_mask"] == 0).sum()) for b in padded)
    total = sum(b["input_ids"].numel() + b["source_input_ids"].numel() for b in cached)
    assert padding_fraction(cached) == pytest.approx(source_padding / total)
    for p, f in zip(padded, flat, strict=True):  # the same rows, in the same order
        assert torch.equal(f["input_ids"][0], p["input_ids"][p["attention_mask"].bool()])
        assert torch.equal(f["source_input_ids"][0], p["source_input_ids"][p["source_attention_mask"].bool()])


@pytest.mark.parametrize(
    "overrides,expected",
    [
        ([], "family 'encoder'"),  # the quickstart's tiny XLM-R
        (["model.name_or_path=tiny:llama", "method.flare.fusion=cross_attention"], "cross_attention"),
        (["model.name_or_path=tiny:llama", "method.kind=xmixup"], "X-Mixup"),
    ],
)
def test_configs_it_does_not_fit_are_refused_before_anything_loads(overrides, expected):
    with pytest.raises(ExperimentConfigError, match=r"(?s)training\.padding_free.*" + expected):
        load_experiment(QUICKSTART, ["training.padding_free=true", *overrides])
    load_experiment(QUICKSTART, ["training.padding_free=true", "model.name_or_path=tiny:llama"])  # fits


def test_an_epoch_of_flattened_batches_trains_as_the_padded_one(tiny_path):
    """The trial's engine on the loader's batches: the same mean loss over an epoch's steps (the optimizer's
    updates included), and a padding fraction of 0 reported."""
    from flare_ray.experiment.training import ScalingSpec
    from flare_ray.training.engine import Engine
    from flare_ray.training.session import in_tune_trial

    task = get_task({"name": "nusax", "language": "jav", "max_records": {"train": 12}})
    losses, padding = {}, {}
    for flat in (False, True):
        fm, tok = flare(tiny_path, "decoder", lora=dict(r=4, lora_alpha=8, lora_dropout=0.0))
        randomize_lora(fm, scale=0.2)
        spec = TrainingSpec(batch_size=4, epochs=1, padding_free=flat, source_cache_gb=0, learning_rate=1e-3)
        encoder = TaskEncoder(task, tok, "decoder", 128, source=True)
        loader = train_loader(list(task.load("train")), encoder, spec, 0, 1)
        with in_tune_trial():
            engine = Engine(fm, spec, ScalingSpec(), total_steps=len(loader), quantized=False)
        losses[flat] = engine.train_epoch(loader, 1)
        padding[flat] = engine.throughput["padding_fraction"]
    assert losses[True] == pytest.approx(losses[False], abs=1e-5)
    assert padding[True] == 0.0 < padding[False]

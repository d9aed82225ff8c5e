"""Saving and loading a FLARE adapter is bit-identical; FLARE-MT trains its projection."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from flare_ray.fusion import FlareConfig, FlareModel
from tests.helpers import batches, flare, load_base, randomize_lora, source_kwargs, train_steps


@pytest.mark.parametrize(
    "family,fusion,options",
    [
        ("encoder", "cross_attention", {}),
        ("encoder", "cross_attention", {"cross_attention_query": "target"}),
        ("decoder", "add_relu", {"unaligned": "lora"}),
    ],
)
def test_save_load_round_trip_is_bit_identical(tiny_path, tmp_path, family, fusion, options):
    fm, tok = flare(
        tiny_path, family, fusion=fusion, fusion_layers=[0, "2-3"], source_representation="module_input", **options
    )
    randomize_lora(fm)
    t, s = batches(tok)
    with torch.no_grad():
        expected = fm(**t, **source_kwargs(s)).logits
    fm.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "flare_config.json").read_text())
    assert saved["fusion"] == fusion and saved["source_representation"] == "module_input"
    assert saved["cross_attention_query"] == options.get("cross_attention_query", "source")
    assert saved["unaligned"] == options.get("unaligned", "fuse_zero")
    assert (tmp_path / "adapter_model.safetensors").is_file()
    assert (tmp_path / "flare_model.safetensors").is_file() == (fusion == "cross_attention")

    base, _ = load_base(tiny_path, family, seed=123)  # another random head: must come from the adapter
    loaded = FlareModel.from_pretrained(base, tmp_path).eval()
    assert loaded.config == fm.config
    with torch.no_grad():
        got = loaded(**t, **source_kwargs(s)).logits
    assert torch.equal(got, expected)
    assert [n for n, p in loaded.named_parameters() if p.requires_grad] == []


def test_a_config_saved_before_the_orientation_and_unaligned_options_computes_as_it_was_trained(tmp_path):
    config = FlareConfig(fusion="cross_attention", cross_attention_query="target", unaligned="lora")
    config.save(tmp_path)
    old = json.loads((tmp_path / "flare_config.json").read_text())
    del old["cross_attention_query"], old["unaligned"]
    (tmp_path / "flare_config.json").write_text(json.dumps(old))
    loaded = FlareConfig.load(tmp_path)
    assert loaded.cross_attention_query == "target" and loaded.unaligned == "lora"  # the code of its time
    assert loaded.fusion == "cross_attention"
    assert FlareConfig().cross_attention_query == "source" and FlareConfig().unaligned == "fuse_zero"  # new ones


def test_loading_with_mismatched_weights_fails_loudly(tiny_path, tmp_path):
    fm, _ = flare(tiny_path, "encoder", fusion="cross_attention")
    fm.save_pretrained(tmp_path)
    (tmp_path / "flare_model.safetensors").unlink()
    base, _ = load_base(tiny_path, "encoder")
    with pytest.raises(FileNotFoundError, match="flare_model.safetensors"):
        FlareModel.from_pretrained(base, tmp_path)


def test_flare_mt_trains_its_projection_and_round_trips(tiny_path, tmp_path):
    mt_path = tiny_path("m2m_100")
    mt_tok = AutoTokenizer.from_pretrained(mt_path)
    fm, tok = flare(tiny_path, "encoder", fusion="add_relu", mt_encoder=str(mt_path))
    assert fm.mt_projection is not None and not any(p.requires_grad for p in fm.mt_encoder.parameters())
    t, _ = batches(tok)
    mt = mt_tok(list(batches.__defaults__[0]), padding=True, return_tensors="pt")  # the *target* text
    batch = {**t, "mt_input_ids": mt.input_ids, "mt_attention_mask": mt.attention_mask, "labels": torch.tensor([0, 2])}

    randomize_lora(fm, scale=0.1)
    fm.train()
    fm(**batch).loss.backward()
    assert fm.mt_projection.weight.grad is not None and fm.mt_projection.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in fm.mt_encoder.parameters())
    with pytest.raises(ValueError, match="mt_input_ids"):
        fm(**t, source_input_ids=t.input_ids)

    fm.zero_grad()
    losses = train_steps(fm, batch, steps=10)
    assert losses[-1] < 0.8 * losses[0], losses

    fm.eval()
    with torch.no_grad():
        expected = fm(**batch).logits
    fm.save_pretrained(tmp_path)
    base, _ = load_base(tiny_path, "encoder", seed=5)
    loaded = FlareModel.from_pretrained(base, tmp_path).eval()  # loads the MT encoder named in the config
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, expected)


def test_a_checkpoint_is_loaded_from_safetensors_only(tmp_path):
    """peft falls back to a pickled adapter_model.bin where no safetensors file is: a trial's adapter and
    stage 1 are loaded only from safetensors, so a pickle in a (shared) checkpoint folder is never run."""
    from flare_ray.training.setup import safetensors_only

    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / "adapter_model.bin").write_bytes(b"not loaded")
    with pytest.raises(
        FileNotFoundError, match="holds no adapter_model.safetensors .it has adapter_model.bin, a pickle"
    ):
        safetensors_only(tmp_path)
    (tmp_path / "adapter_model.safetensors").write_bytes(b"")
    assert safetensors_only(tmp_path) == tmp_path

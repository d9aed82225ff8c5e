"""``FlareModel.require_fusion``: a step in which a fusion site never fused fails loudly, naming it.

FLARE that silently trains as plain LoRA (no source in the batch, an attention
path that bypasses the adapted modules, a checkpointing path without the
source) looks like a working run; these tests pin that it cannot.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from flare_ray.fusion import FusionNotAppliedError
from tests.helpers import batches, flare, randomize_lora, source_kwargs, task_kwargs


def _step(fm, tok, family, with_source=True):
    t, s = batches(tok)
    kwargs = source_kwargs(s) if with_source else {}
    fm(**t, **kwargs, **task_kwargs(family, tok, t)).loss.backward()


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder", "decoder"])
def test_a_training_step_fuses_every_site(tiny_path, family):
    fm, tok = flare(tiny_path, family)
    randomize_lora(fm, scale=0.2)
    fm.train()
    with fm.require_fusion() as counts:
        _step(fm, tok, family)
    assert set(counts) == {site.name for site in fm.plan.sites}
    assert all(n == 1 for n in counts.values()), counts
    assert fm._fusion_counts is None  # nothing is counted outside the block


def test_a_batch_without_source_inputs_raises(tiny_path):
    fm, tok = flare(tiny_path, "encoder")
    fm.train()
    with pytest.raises(FusionNotAppliedError, match=r"8 of 8 fusion sites never fused.*source_input_ids") as err:
        with fm.require_fusion():
            _step(fm, tok, "encoder", with_source=False)
    assert err.value.sites == [site.name for site in fm.plan.sites]
    assert isinstance(err.value, RuntimeError)
    with pytest.raises(FusionNotAppliedError):
        with fm.require_fusion(), fm.fusion_disabled():
            _step(fm, tok, "encoder")


@pytest.mark.parametrize("family,module", [("encoder", "query"), ("decoder", "v_proj")])
def test_an_attention_path_that_bypasses_an_adapted_module_raises_naming_its_site(
    tiny_path, monkeypatch, family, module
):
    fm, tok = flare(tiny_path, family)
    fm.train()
    site = next(s for s in fm.plan.sites if s.block == 1 and s.name.endswith("." + module))
    parent_name, attr = site.name.rsplit(".", 1)
    parent = fm.peft_model.get_base_model().get_submodule(parent_name)
    monkeypatch.setattr(parent, attr, site.layer.base_layer)  # attention now calls the frozen Linear directly
    with pytest.raises(FusionNotAppliedError, match="1 of 8 fusion sites never fused") as err:
        with fm.require_fusion():
            _step(fm, tok, family)
    assert err.value.sites == [site.name]
    assert site.name in str(err.value)


@pytest.mark.parametrize("reentrant", [False, True])
def test_counts_under_gradient_checkpointing(tiny_path, reentrant):
    fm, tok = flare(tiny_path, "decoder")
    randomize_lora(fm, scale=0.2)
    base = fm.peft_model.get_base_model()
    base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    base.enable_input_require_grads()
    fm.train()
    with fm.require_fusion() as counts:
        _step(fm, tok, "decoder")
    assert all(n >= 1 for n in counts.values()), counts  # the recomputation in backward may count again


def test_an_error_in_the_block_propagates_unchanged_and_blocks_nest(tiny_path):
    fm, tok = flare(tiny_path, "encoder")
    with pytest.raises(KeyError, match="boom"):
        with fm.require_fusion():
            raise KeyError("boom")
    assert fm._fusion_counts is None
    t, s = batches(tok)
    with fm.require_fusion() as outer:
        with torch.no_grad(), fm.require_fusion() as inner:
            fm(**t, **source_kwargs(s))
    assert all(n == 1 for n in inner.values()) and outer == inner


def test_the_error_survives_pickling():
    err = FusionNotAppliedError(["a.q", "a.v"], total=4)
    again = pickle.loads(pickle.dumps(err))
    assert again.sites == ["a.q", "a.v"] and str(again) == str(err)

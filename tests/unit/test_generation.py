"""Generation policy: decoders fuse the prompt at prefill and generate plain-LoRA tokens, exactly
as training treats answer tokens; mT5 fuses in the encoder."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import batches, flare, randomize_lora, source_kwargs

GEN = dict(max_new_tokens=5, min_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_scores=True)


@pytest.mark.parametrize(
    "padded,fusion", [(True, "add_relu"), (False, "add_relu"), (True, "cross_attention"), (False, "cross_attention")]
)
def test_decoder_fuses_prompt_at_prefill_and_not_generated_tokens(tiny_path, padded, fusion):
    # cross_attention (the source queries the target): its keys are the prompt tokens only, so
    # teacher forcing with the answer in the sequence computes what generation computed.
    fm, tok = flare(tiny_path, "decoder", fusion=fusion)
    randomize_lora(fm, scale=0.3)
    t, s = batches(tok)
    assert (t.attention_mask == 0).any() and tok.padding_side == "left"
    if not padded:  # generate drops an all-ones mask: the policy must not depend on it
        t["input_ids"], t["attention_mask"] = t.input_ids[:, -6:], t.attention_mask[:, -6:]
        assert t.attention_mask.all()
    cached = fm.generate(**t, **source_kwargs(s), **GEN)
    uncached = fm.generate(**t, **source_kwargs(s), use_cache=False, **GEN)
    plain = fm.generate(**t, **GEN)
    assert fm._active is None
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(cached.scores[0], plain.scores[0], atol=1e-3), "the prompt must be fused"

    # Teacher forcing the generated sequence with the prompt as fusion mask reproduces every step:
    # this is how a decoder is trained (labels = -100 on the prompt marks what fuses).
    prompt_len = t.input_ids.shape[1]
    new = cached.sequences.shape[1] - prompt_len
    mask = torch.cat([t.attention_mask, torch.ones(2, new, dtype=torch.long)], 1)
    fusion_mask = torch.cat([t.attention_mask, torch.zeros(2, new, dtype=torch.long)], 1)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    labels = cached.sequences.clone()
    labels[fusion_mask.bool() | (mask == 0)] = -100
    with torch.no_grad():
        forced = fm(
            cached.sequences, mask, position_ids=position_ids, **source_kwargs(s), fusion_mask=fusion_mask
        ).logits
        by_labels = fm(cached.sequences, mask, position_ids=position_ids, **source_kwargs(s), labels=labels).logits
    steps, scores = forced[:, prompt_len - 1 : -1], torch.stack(cached.scores, 1)
    finite = scores.isfinite()  # min_new_tokens masks end-of-sequence with -inf
    torch.testing.assert_close(steps[finite], scores[finite], rtol=1e-4, atol=1e-4)
    assert torch.equal(by_labels, forced)


def test_encoder_decoder_fuses_in_the_encoder(tiny_path):
    fm, tok = flare(tiny_path, "encoder_decoder", fusion="cross_attention")
    randomize_lora(fm, scale=0.3)
    assert all(site.name.startswith("encoder.") for site in fm.plan.sites)
    t, s = batches(tok)
    fused = fm.generate(**t, **source_kwargs(s), **GEN)
    plain = fm.generate(**t, **GEN)
    assert not torch.allclose(fused.scores[0], plain.scores[0], atol=1e-3)
    with torch.no_grad():
        forced = fm(**t, **source_kwargs(s), decoder_input_ids=fused.sequences[:, :-1]).logits
    scores = torch.stack(fused.scores, 1)
    finite = scores.isfinite()
    torch.testing.assert_close(forced[finite], scores[finite], rtol=1e-4, atol=1e-4)

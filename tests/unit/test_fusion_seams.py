"""The seams inside FlareModel: the source batch, the source providers and the decoding-step alignment."""

from __future__ import annotations

import pytest
import torch

from flare_ray.fusion.alignment import align, step_alignment
from flare_ray.fusion.model import step_span
from flare_ray.fusion.mt import MTSource
from flare_ray.fusion.provider import SourceBatch
from flare_ray.fusion.source import SourcePass, SourceStates
from tests.helpers import batches, flare


def _left_padded(lengths: list[int], width: int) -> torch.Tensor:
    return torch.stack([torch.cat([torch.zeros(width - n), torch.ones(n)]).long() for n in lengths])


@pytest.mark.parametrize("source_lengths", [[3, 6], [0, 4], [8, 8]])
def test_step_alignment_is_the_prompt_only_alignment_of_the_whole_sequence(source_lengths):
    prompt_mask, source_mask = _left_padded([5, 3], 5), _left_padded(source_lengths, 8)
    prompt = align(prompt_mask, prompt_mask, source_mask)
    for generated in range(4):
        total = 5 + generated
        full_mask = torch.cat([prompt_mask, torch.ones(2, generated, dtype=torch.long)], 1)
        prompt_only = torch.cat([prompt_mask, torch.zeros(2, generated, dtype=torch.long)], 1)
        whole = align(full_mask, prompt_only, source_mask)
        for new in {total, 1}:  # without and with the KV cache
            step = step_alignment(prompt, total, new)  # against the last `new` positions of the whole
            assert torch.equal(step.fuse, whole.fuse[:, -new:]) and torch.equal(step.rows, whole.rows[:, -new:])
            assert torch.equal(step.index[step.fuse], whole.index[:, -new:][whole.fuse[:, -new:]])
            assert step.index.shape == (2, new) and bool((step.index < 8).all())


def test_step_span_reads_the_mask_or_the_cache():
    ids = torch.zeros(2, 1, dtype=torch.long)
    assert step_span({"input_ids": ids, "attention_mask": torch.ones(2, 7)}) == (7, 1)

    class Cache:
        def get_seq_length(self):
            return 6

    assert step_span({"input_ids": ids, "cache": Cache()}) == (7, 1)
    assert step_span({"input_ids": None, "inputs_embeds": torch.zeros(2, 4, 3), "past_key_values": None}) == (4, 4)


def test_source_batch_takes_states_or_inputs_not_both():
    states = SourceStates(torch.zeros(1, 2, 4), torch.ones(1, 2))

    class Provider:
        def states(self, batch):
            return "made"

    assert SourceBatch(source_states=states).states(Provider()) is states
    assert SourceBatch(source_input_ids=torch.ones(1, 2)).states(Provider()) == "made"
    with pytest.raises(ValueError, match="either source_states or source inputs"):
        SourceBatch(mt_input_ids=torch.ones(1, 2), source_states=states).states(Provider())


def test_the_provider_is_chosen_once_and_flare_mt_weights_stay_where_they_were(tiny_path):
    fm, tok = flare(tiny_path, "encoder")
    assert isinstance(fm.source, SourcePass) and fm.mt_encoder is None and fm.mt_projection is None
    t, s = batches(tok)
    with pytest.raises(ValueError, match="no MT encoder"):
        fm(**t, mt_input_ids=s.input_ids)

    mt_fm, _ = flare(tiny_path, "encoder", mt_encoder=str(tiny_path("m2m_100")))
    assert isinstance(mt_fm.source, MTSource)
    assert mt_fm.mt_projection is mt_fm.source.projection and mt_fm.mt_encoder is mt_fm.source.encoder
    assert {k.split(".")[0] for k in mt_fm.flare_state_dict()} == {"mt_projection"}
    with pytest.raises(ValueError, match="FLARE-MT takes mt_input_ids"):
        mt_fm.source_states(s.input_ids, s.attention_mask)
    assert mt_fm.source_states() is None

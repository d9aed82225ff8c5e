"""``training.group_by_length`` (transformers' length-grouped sampler behind the trial's own loader) and the
padding fraction each epoch reports (``train/padding_fraction``): the same seed and epoch give the same batches,
every row comes once an epoch, grouping pads less, a FLARE row's fused output does not depend on the rows it is
batched with, and the figure is the hand count."""

from __future__ import annotations

import pytest
import torch

from flare_ray.experiment.training import ScalingSpec, TrainingSpec
from flare_ray.tasks import get_task
from flare_ray.tasks.encoding import TaskEncoder
from flare_ray.training.engine import Engine, padding_fraction
from flare_ray.training.session import in_tune_trial
from flare_ray.training.setup import row_lengths, train_loader
from tests.helpers import flare, randomize_lora


@pytest.fixture(scope="module")
def task():
    return get_task({"name": "nusax", "language": "jav", "max_records": {"train": 96}})


def skewed(task, rows: int = 48) -> list[dict]:
    """NusaX rows whose lengths are far apart: every fourth row's text four times over."""
    records = list(task.load("train"))[:rows]
    for i, r in enumerate(records):
        if i % 4 == 0:
            r.update(target_text=" ".join([r["target_text"]] * 4), source_text=" ".join([r["source_text"]] * 4))
    return records


def encoder(task, tiny_path, arch: str = "xlm-roberta", family: str = "encoder", source: bool = True):
    from transformers import AutoTokenizer

    return TaskEncoder(task, AutoTokenizer.from_pretrained(tiny_path(arch)), family, 128, source=source)


def order(loader, epoch: int) -> list[int]:
    loader.sampler.set_epoch(epoch)
    return list(loader.sampler)


def loaders(records, enc, batch_size: int = 8, world: int = 1, seed: int = 42, **training):
    """This world's loaders, plain and grouped."""
    return {
        grouped: [
            train_loader(
                records,
                enc,
                TrainingSpec(batch_size=batch_size, seed=seed, group_by_length=grouped, **training),
                rank,
                world,
            )
            for rank in range(world)
        ]
        for grouped in (False, True)
    }


def test_grouped_batches_are_seeded_by_the_seed_and_the_epoch(task, tiny_path):
    records, enc = skewed(task), encoder(task, tiny_path)
    (first,), (again,) = loaders(records, enc)[True], loaders(records, enc)[True]
    (other_seed,) = loaders(records, enc, seed=7)[True]
    assert order(first, 1) == order(again, 1) and order(first, 2) == order(again, 2)  # a new loader, a new process
    assert order(first, 1) != order(first, 2)  # reshuffled every epoch
    assert order(first, 1) != order(other_seed, 1)
    torch.manual_seed(0)
    drawn = order(first, 3)
    torch.manual_seed(1)  # the global random state (dropout's) plays no part
    assert order(first, 3) == drawn
    first.sampler.set_epoch(2), again.sampler.set_epoch(2)
    batches = [b["input_ids"] for b in first]  # and the batches themselves, as collated
    assert all(torch.equal(a, b) for a, b in zip(batches, [b["input_ids"] for b in again], strict=True))


@pytest.mark.parametrize("world", [1, 2])
def test_every_row_comes_once_an_epoch_in_as_many_steps(task, tiny_path, world):
    records, enc = skewed(task, rows=45), encoder(task, tiny_path)  # 45: not a multiple of the batch or the world
    both = loaders(records, enc, batch_size=4, world=world)
    for epoch in (1, 2):
        plain = [order(loader, epoch) for loader in both[False]]
        grouped = [order(loader, epoch) for loader in both[True]]
        assert [len(o) for o in grouped] == [len(o) for o in plain]  # each rank's share, as before
        assert [len(loader) for loader in both[True]] == [len(loader) for loader in both[False]]  # the steps too
        rows = [i for o in grouped for i in o]
        if world == 1:
            assert sorted(rows) == list(range(len(records)))  # exactly once
        else:  # every row, and only the rows that fill the last step repeated (as DistributedSampler does)
            assert set(rows) == set(range(len(records))) and len(rows) - len(set(rows)) == 1


@pytest.mark.parametrize("arch,family,source", [("xlm-roberta", "encoder", True), ("llama", "decoder", False)])
def test_grouping_pads_less(task, tiny_path, arch, family, source):
    records, enc = skewed(task, rows=96), encoder(task, tiny_path, arch, family, source)
    both = loaders(records, enc, batch_size=4)
    (plain,), (grouped,) = both[False], both[True]
    for epoch in (1, 2):
        plain.sampler.set_epoch(epoch), grouped.sampler.set_epoch(epoch)
        before, after = padding_fraction(plain), padding_fraction(grouped)
        assert after < 0.5 * before, (before, after)  # half of the padding gone at least (seeded: exact)
    lengths = row_lengths(records, enc, chunk=5)  # a row's tokens on its longest side, as its batches encode them
    alone = [enc.train_batch([r]).inputs for r in records]
    assert lengths == [max(int(v.sum()) for k, v in b.items() if k.endswith("attention_mask")) for b in alone]
    assert len(set(lengths)) > 5


def test_the_padding_fraction_is_the_hand_count():
    masks = [
        {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]), "source_attention_mask": torch.tensor([[1, 1]])},
        {"attention_mask": torch.tensor([[1, 1, 1]]), "source_attention_mask": torch.tensor([[1, 0, 0]])},
    ]
    batches = [{**m, "input_ids": torch.ones_like(m["attention_mask"])} for m in masks]  # ids count for nothing
    # positions: 8 + 2 + 3 + 3 = 16; tokens: 5 + 2 + 3 + 1 = 11; padding 5 of 16
    assert padding_fraction(batches) == pytest.approx(5 / 16)
    assert padding_fraction([]) == 0.0


def test_an_epoch_reports_its_padding_fraction(task, tiny_path):
    fm, tok = flare(tiny_path, "encoder", lora=dict(r=4, lora_alpha=8))
    enc = TaskEncoder(task, tok, "encoder", 128, source=True)
    spec = TrainingSpec(batch_size=8, epochs=1, group_by_length=True)
    loader = train_loader(skewed(task, rows=24), enc, spec, 0, 1)
    with in_tune_trial():
        engine = Engine(fm, spec, ScalingSpec(), total_steps=len(loader), quantized=False)
    engine.train_epoch(loader, 1)
    loader.sampler.set_epoch(1)  # the epoch's batches again
    expected = padding_fraction(loader)
    assert 0 < expected < 1 and engine.throughput["padding_fraction"] == pytest.approx(expected)


@torch.no_grad()
def per_row(fm, loader, family: str) -> tuple[dict[int, torch.Tensor], dict[int, tuple[int, int]]]:
    """Each row's output over an epoch (by its index in the records): a task head's logits; a decoder's
    logits at the row's real tokens. And the width its batch padded it to, on the target and the source side."""
    rows = iter(list(loader.sampler))
    out, widths = {}, {}
    for batch in loader:
        logits = fm(**batch).logits
        for i in range(len(logits)):
            row = next(rows)
            widths[row] = (batch["input_ids"].shape[1], batch["source_input_ids"].shape[1])
            out[row] = logits[i][batch["attention_mask"][i].bool()] if family == "decoder" else logits[i]
    return out, widths


@pytest.mark.parametrize("arch,family", [("xlm-roberta", "encoder"), ("llama", "decoder")])
def test_a_flare_row_gives_the_same_fused_output_in_the_grouped_order(task, tiny_path, arch, family):
    fm, tok = flare(tiny_path, family, fusion="add_relu", lora=dict(r=4, lora_alpha=8, lora_dropout=0.0))
    randomize_lora(fm, scale=0.2)  # fusion and LoRA change the output
    enc = TaskEncoder(task, tok, family, 128, source=True)
    records = list(task.load("train"))[:48]  # NusaX's own lengths: windows of three batches of 4
    both = loaders(records, enc, batch_size=4)
    (plain,), (grouped,) = both[False], both[True]
    plain.sampler.set_epoch(1), grouped.sampler.set_epoch(1)
    assert order(plain, 1) != order(grouped, 1)
    fm.eval()
    (default, padded), (reordered, regrouped) = per_row(fm, plain, family), per_row(fm, grouped, family)
    assert sorted(default) == sorted(reordered) == list(range(len(records)))
    assert sum(padded[row] != regrouped[row] for row in padded) > len(records) // 2  # padded otherwise, on both sides
    for row in default:
        torch.testing.assert_close(reordered[row], default[row], rtol=0, atol=1e-5)
    batch = next(iter(grouped))  # and the source side is fused: without it the output differs
    unfused = {k: v for k, v in batch.items() if not k.startswith("source_")}
    with torch.no_grad():
        assert not torch.allclose(fm(**batch).logits, fm(**unfused).logits, atol=1e-3)


@pytest.mark.parametrize("world", [1, 2])
def test_a_window_of_batches_sorts_more_rows_together(task, tiny_path, world):
    """``group_by_length: <int>``: windows of that many batches (transformers' own grouping otherwise), seeded
    alike, every row once an epoch, as many steps; a window of the whole epoch pads less than the Trainer's."""
    records, enc = skewed(task, rows=96), encoder(task, tiny_path)

    def ranks(window):
        spec = TrainingSpec(batch_size=4, seed=42, group_by_length=window)
        return [train_loader(records, enc, spec, rank, world) for rank in range(world)]

    trainer, whole, again = ranks(True), ranks(96 // (4 * world)), ranks(96 // (4 * world))
    for epoch in (1, 2):
        rows = [i for loader in whole for i in order(loader, epoch)]
        assert sorted(rows) == list(range(len(records)))  # 96 rows: no repeats in any world
        assert [order(loader, epoch) for loader in whole] == [order(loader, epoch) for loader in again]
        assert [len(a) for a in whole] == [len(b) for b in trainer]
    assert order(whole[0], 1) != order(whole[0], 2)
    padded = {name: padding_fraction(loaders[0]) for name, loaders in (("trainer", trainer), ("whole", whole))}
    assert padded["whole"] < padded["trainer"], padded
    with pytest.raises(ValueError, match="at least 1 batch"):
        TrainingSpec(group_by_length=0)

"""The engine of a run: mixed precision (``training.precision``), the throughput and memory it measures, and
the training state a restarted run continues from."""

from __future__ import annotations

import pytest
import torch

from flare_ray.experiment.training import ScalingSpec, TrainingSpec
from flare_ray.training.engine import Engine, tokens
from flare_ray.training.session import in_tune_trial
from tests.helpers import batches, flare, source_kwargs, task_kwargs


def setup(tiny_path, precision: str = "fp32", **training):
    fm, tok = flare(tiny_path, "encoder", fusion="add_relu", lora=dict(r=8, lora_alpha=16))
    t, s = batches(tok)
    batch = {**t, **source_kwargs(s), **task_kwargs("encoder", tok, t)}
    spec = TrainingSpec(precision=precision, learning_rate=3e-2, warmup_ratio=0.0, **training)
    loader = torch.utils.data.DataLoader([batch] * 4, batch_size=None)  # four steps an epoch, the same batch
    with in_tune_trial():  # one process, as a single-worker trial runs (no Ray Train worker group)
        return Engine(fm, spec, ScalingSpec(), total_steps=4 * spec.epochs, quantized=False), loader, batch


def test_tokens_are_the_attention_masks_ones_of_target_and_source(tiny_path):
    _, _, batch = setup(tiny_path)
    expected = int(batch["attention_mask"].sum() + batch["source_attention_mask"].sum())
    assert tokens(batch) == expected and expected < batch["input_ids"].numel() + batch["source_input_ids"].numel()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_the_forward_in_that_dtype_and_learns(tiny_path, precision):
    engine, loader, batch = setup(tiny_path, precision, epochs=3)
    seen = []
    linear = next(m for n, m in engine.unwrapped.named_modules() if n.endswith("query.base_layer"))
    handle = linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    losses = [engine.train_epoch(loader, epoch) for epoch in (1, 2, 3)]
    handle.remove()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert set(seen) == {dtype}  # the base model's matmuls under autocast
    assert engine.scaler.is_enabled() == (precision == "fp16")  # fp16 scales the loss, bf16 needs not
    assert all(p.dtype == torch.float32 for p in engine.trainable)  # the adapter's weights stay fp32
    assert losses[-1] < 0.8 * losses[0], losses
    with engine.autocast():  # scoring runs in the same precision
        assert engine.unwrapped(**batch).logits.dtype in (dtype, torch.float32)
    throughput = engine.throughput
    assert throughput["tokens_per_second"] > 0 and throughput["peak_memory_gb"] > 0.05  # this process's RSS


def test_fp32_runs_no_autocast(tiny_path):
    engine, loader, _ = setup(tiny_path)
    seen = []
    linear = next(m for n, m in engine.unwrapped.named_modules() if n.endswith("query.base_layer"))
    linear.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    engine.train_epoch(loader, 1)
    assert set(seen) == {torch.float32} and not engine.scaler.is_enabled()


def test_a_restarted_engine_continues_with_the_same_optimizer_and_schedule(tiny_path, tmp_path):
    from flare_ray.training.state_files import STATE, TENSORS, load_state, save_state

    engine, loader, _ = setup(tiny_path, epochs=2)
    engine.train_epoch(loader, 1)
    adapter, state = engine.adapter_state(), engine.training_state()
    # as the checkpoint keeps it: safetensors and JSON, read back without pickle
    save_state({**state, "best": {"score": 0.5, "epoch": 1, "state": adapter}}, tmp_path / "resume")
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == sorted([STATE, TENSORS])
    state = load_state(tmp_path / "resume")
    adapter = state["best"]["state"]
    assert set(state["optimizer"]["state"]) == set(range(len(adapter)))  # integer parameter indices kept
    torch.manual_seed(2)  # the same dropout in both epochs 2
    engine.train_epoch(loader, 2)
    continued = engine.adapter_state()

    again, _, _ = setup(tiny_path, epochs=2)  # a new process after a failure: fresh model and optimizer
    again.load_adapter_state(adapter)
    again.load_training_state(state)
    assert again.learning_rate == pytest.approx(state["scheduler"]["_last_lr"][0])
    torch.manual_seed(2)
    again.train_epoch(loader, 2)
    for name, value in again.adapter_state().items():  # the same epoch 2 as the run that never stopped
        torch.testing.assert_close(value, continued[name], rtol=1e-5, atol=1e-6)


def test_a_restored_state_keeps_its_values_when_its_checkpoint_is_written_over(tmp_path):
    """Tune writes a restored trial's next checkpoint over the folder it was restored from (it reuses the
    checkpoint numbers): the optimizer's moments read from there must not change with the file (a restart
    trained one epoch, then its loss became NaN)."""
    import shutil

    from flare_ray.training.state_files import TENSORS, load_state, save_state

    save_state({"optimizer": {"exp_avg": torch.ones(1000)}}, tmp_path / "restored")
    save_state({"optimizer": {"exp_avg": torch.full((1000,), 7.0)}}, tmp_path / "next")
    state = load_state(tmp_path / "restored")
    shutil.copyfile(tmp_path / "next" / TENSORS, tmp_path / "restored" / TENSORS)  # in place, as a copy writes
    assert torch.equal(state["optimizer"]["exp_avg"], torch.ones(1000))

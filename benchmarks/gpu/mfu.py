"""Model FLOPs utilisation of LoRA and FLARE training steps in bf16 on a 1B-class decoder (issue 15, item 3).

On a CUDA GPU, through the same trial setup as ``benchmarks/steps.py`` (NusaX Javanese batches, the project's
adapters): the frozen base in bfloat16 under bf16 autocast, LoRA r 8 on q/k/v/o, FLARE add_relu on every
block, no gradient checkpointing. Per method: the median step time, tokens/s, peak GPU memory and MFU.

Model FLOPs of a step (computed positions, padding included, as the GPU computes them):
- the trained model: 4·N·T + 12·L·S·d·T, where N is the weights in matrix products (the base's linear layers,
  the LM head, LoRA's), T the batch's positions, S its length, L the blocks and d the width: a forward (2·N·T)
  and the backward's input gradients (2·N·T); frozen weights need no weight gradient, LoRA's are negligible.
  (The 6·N·T convention of full fine-tuning would give 1.5× these MFUs.)
- FLARE's source pass, where it runs (not when the cache holds the batch): a forward, 2·N·T_src + 4·L·S·d·T_src.

MFU = model FLOPs ÷ step time ÷ the GPU's dense bf16 peak (``--peak-tflops``; H100/H200 SXM: 989).

``--variants`` measures the methods as they run by default and with each of issue 31's changes on its own
(:data:`VARIANTS`: length-grouped batches, padding-free batches, the attention implementations, torch.compile),
one model load per variant and method; a variant the machine cannot run (FlashAttention 2 not installed) is
skipped and said so.

    python benchmarks/gpu/mfu.py MODEL_DIR [--batch 32] [--length 256] [--variants default padding_free ...]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import steps

# variant -> the experiment settings it changes (benchmarks/steps.py: ``experiment``)
VARIANTS: dict[str, dict] = {
    "default": {},
    "group_by_length": {"training": {"group_by_length": True}},
    "padding_free": {"training": {"padding_free": True}},
    "eager": {"attn_implementation": "eager"},
    "sdpa": {"attn_implementation": "sdpa"},
    "flash_attention_2": {"attn_implementation": "flash_attention_2"},
    # padding-free batches save compute only where attention runs per sequence (FlashAttention's varlen
    # kernels); with SDPA or eager transformers masks one attention over the whole flattened row
    "padding_free_flash": {"training": {"padding_free": True}, "attn_implementation": "flash_attention_2"},
    "compile": {"compile": True},
}
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0}


def model_flops(row: dict, layers: int, width: int, source_pass: bool, batch: int) -> float:
    n, t = row["matmul_params"], row["positions"]
    flops = 4 * n * t + 12 * layers * (t // batch) * width * t
    if source_pass:
        ts = row["source_positions"]
        flops += 2 * n * ts + 4 * layers * (ts // batch) * width * ts
    return float(flops)


def measure(args, kind: str, variant: dict, layers: int, width: int, peak: float | None) -> dict:
    """One method's row under one variant's settings."""
    experiment = steps.experiment(
        args.model,
        None,
        kind,
        args.batch,
        args.length,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
        precision="bf16",
        dtype="bfloat16",
        **variant,
    )
    row = steps.time_steps(experiment, args.warmup, args.steps)
    flops = model_flops(row, layers, width, kind == "flare", args.batch)
    row["tflops"] = flops / row["seconds"] / 1e12
    row["mfu"] = row["tflops"] / peak if peak else None
    row["tokens_per_second"] = row["tokens"] / row["seconds"]
    return row


def table(results: dict[str, dict]) -> list[str]:
    """The Markdown rows: each row's step time also as a ratio to LoRA's (the default variant's)."""
    lora = results.get("lora", {}).get("seconds")
    lines = [
        "| method | step (s) | ÷ LoRA | tokens/s (real) | padding | peak GPU memory (GiB) | model TFLOP/s | MFU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, row in results.items():
        ratio = f"{row['seconds'] / lora:.2f}" if lora else ""
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "?"
        padding = 1 - row["tokens"] / row["positions"] if row["positions"] else 0.0
        lines.append(
            f"| {kind} | {row['seconds']:.4f} | {ratio} | {row['tokens_per_second']:,.0f} | {padding:.1%} | "
            f"{row['peak_memory_gb']:.1f} | {row['tflops']:.0f} | {mfu} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a decoder folder (benchmarks/gpu/decoder.py)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=["lora", "flare", "flare_cached"])
    parser.add_argument("--variants", nargs="+", default=["default"], choices=list(VARIANTS))
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("mfu.py needs a CUDA GPU")
        return 2
    from transformers import AutoConfig

    name = torch.cuda.get_device_name()
    peak = args.peak_tflops or next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    config = AutoConfig.from_pretrained(args.model)
    layers, width = config.num_hidden_layers, config.hidden_size
    print(f"{name}; dense bf16 peak {peak} TFLOPS; batch {args.batch} x ≤{args.length}", flush=True)
    results, skipped = {}, {}
    for variant in args.variants:
        if "flash" in variant and importlib.util.find_spec("flash_attn") is None:
            skipped[variant] = "flash_attn is not installed"
            continue
        for kind in args.methods:
            try:
                row = measure(args, kind, VARIANTS[variant], layers, width, peak)
            except Exception as error:  # a variant this machine cannot run: said in the table, the rest go on
                skipped[f"{variant} {kind}"] = f"{type(error).__name__}: {str(error)[:200]}"
                continue
            results[kind if variant == "default" else f"{kind} {variant}"] = row
            if args.json:  # after every row: a time box that cuts the run short keeps the rows measured
                args.json.write_text(json.dumps({"device": name, "peak_tflops": peak, "results": results}, indent=1))
            print(f"  {variant:<18} {kind:<14} {row['seconds']:.4f} s/step, MFU {row['mfu'] or 0:.1%}", flush=True)
            torch.cuda.empty_cache()
    lines = table(results)
    lines += [f"- {what}: skipped ({why})" for what, why in skipped.items()]
    first = next(iter(results.values()))
    source = max(row["source_positions"] for row in results.values())  # FLARE's (LoRA reads no source)
    lines.append(
        f"\nbatch: {first['positions']} positions ({first['tokens']} real tokens), source "
        f"{source} positions; N = {first['matmul_params'] / 1e9:.2f} B in matrix products"
    )
    print("\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({"device": name, "peak_tflops": peak, "results": results, "skipped": skipped}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

    python benchmarks/gpu/mfu.py MODEL_DIR [--batch 32] [--length 256]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import steps

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0}


def model_flops(row: dict, layers: int, width: int, source_pass: bool, batch: int) -> float:
    n, t = row["matmul_params"], row["positions"]
    flops = 4 * n * t + 12 * layers * (t // batch) * width * t
    if source_pass:
        ts = row["source_positions"]
        flops += 2 * n * ts + 4 * layers * (ts // batch) * width * ts
    return float(flops)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="a decoder folder (benchmarks/gpu/decoder.py)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--methods", nargs="+", default=["lora", "flare", "flare_cached"])
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
    results = {}
    for kind in args.methods:
        experiment = steps.experiment(
            args.model,
            None,
            kind,
            args.batch,
            args.length,
            target_modules=("q_proj", "k_proj", "v_proj", "o_proj"),
            precision="bf16",
            dtype="bfloat16",
        )
        row = steps.time_steps(experiment, args.warmup, args.steps)
        source_pass = kind == "flare"
        flops = model_flops(row, layers, width, source_pass, args.batch)
        row["tflops"] = flops / row["seconds"] / 1e12
        row["mfu"] = row["tflops"] / peak if peak else None
        row["tokens_per_second"] = row["tokens"] / row["seconds"]
        results[kind] = row
        torch.cuda.empty_cache()
    lora = results.get("lora", {}).get("seconds")
    lines = [
        "| method | step (s) | ÷ LoRA | tokens/s (real) | peak GPU memory (GiB) | model TFLOP/s | MFU |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind, row in results.items():
        ratio = f"{row['seconds'] / lora:.2f}" if lora else ""
        mfu = f"{row['mfu']:.1%}" if row["mfu"] is not None else "?"
        lines.append(
            f"| {kind} | {row['seconds']:.4f} | {ratio} | {row['tokens_per_second']:,.0f} | "
            f"{row['peak_memory_gb']:.1f} | {row['tflops']:.0f} | {mfu} |"
        )
    first = next(iter(results.values()))
    source = max(row["source_positions"] for row in results.values())  # FLARE's (LoRA reads no source)
    lines.append(
        f"\nbatch: {first['positions']} positions ({first['tokens']} real tokens), source "
        f"{source} positions; N = {first['matmul_params'] / 1e9:.2f} B in matrix products"
    )
    print("\n".join(lines), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"device": name, "peak_tflops": peak, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

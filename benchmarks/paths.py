"""Training-step time of LoRA and FLARE (source cached) on the attention and compile paths a trial can take
(issue 31, item 2): ``model.attn_implementation`` eager against sdpa (transformers' default for XLM-R), and
``training.compile`` off against on (torch.compile with inductor, as the engine compiles a trial's model).

    python benchmarks/paths.py              # XLM-R base shape, batch 16 x 128; --results FILE appends the table
    python benchmarks/paths.py --small      # the tiny models (a smoke run)

Every path is built first through the trial's own setup (``benchmarks/steps.py``'s models and experiment), and
warmed up (its compilation included, timed apart); then the timed steps go round the paths in turn, so each
path's median is taken beside the others' under the same load. Ratios are to LoRA on the eager, uncompiled
path of the same run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).parent))

METHODS = ["lora", "flare_cached"]
PATHS = [("eager", False), ("sdpa", False), ("eager", True), ("sdpa", True)]  # (attention, compile)
UNCOMPILED = [p for p in PATHS if not p[1]]  # what the suite's smoke run can afford (compiling takes minutes on a CPU)


def prepare(config, warmup: int) -> tuple[Callable[[int], float], dict[str, Any]]:
    """A function that runs training step ``i`` (forward, backward, AdamW) of ``config``'s trial and returns
    its seconds, after ``warmup`` steps on the same batches (which fill the source cache and compile)."""
    from flare_ray.models.loading import attn_implementation
    from flare_ray.training.engine import COMPILE_BACKEND
    from flare_ray.training.setup import build_trial, train_loader
    from flare_ray.training.source_cache import attach_source_cache

    trial = build_trial(config, "jav", roles=("train",))
    loader = train_loader(trial.splits["train"], trial.encoder, config.training, 0, 1)
    batches = [batch for batch, _ in zip(loader, range(max(warmup, 1)))]
    cache = attach_source_cache(trial.model, config)
    model = trial.model.train()
    runner = torch.compile(model, backend=COMPILE_BACKEND) if config.training.compile else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def step(i: int) -> float:
        started = time.perf_counter()
        runner(**batches[i % len(batches)]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    warm = [step(i) for i in range(warmup)]
    looked = (cache.hits, cache.misses) if cache is not None else None  # the timed steps' lookups from here
    info = {"attention": attn_implementation(model), "warmup_s": sum(warm), "cache": cache, "looked": looked}
    return step, info


def measure(
    root: Path,
    small: bool = False,
    warmup: int = 2,
    steps: int = 5,
    batch_size: int = 16,
    max_length: int = 128,
    methods: list[str] = METHODS,
    paths: list[tuple[str, bool]] = PATHS,
) -> dict[str, Any]:
    """Every (method, attention, compile) path's median step seconds, its warm-up seconds (compilation
    included) and the attention its model ran; steps interleaved across the paths."""
    from steps import build_models, experiment

    base, mt = build_models(root, small)
    prepared = {}
    for kind in methods:
        for attention, compiled in paths:
            config = experiment(base, mt, kind, batch_size, max_length, attn_implementation=attention, compile=compiled)
            torch.manual_seed(0)
            prepared[kind, attention, compiled] = prepare(config, warmup)
            print(f"  prepared {kind} {attention} compile={compiled}", flush=True)
    times: dict[tuple, list[float]] = {key: [] for key in prepared}
    keys = list(prepared)
    for i in range(steps):
        for key in keys[i % len(keys) :] + keys[: i % len(keys)]:  # a different path first each round
            times[key].append(prepared[key][0](warmup + i))
    rows = []
    for (kind, attention, compiled), (_, info) in prepared.items():
        cache = info["cache"]
        rows.append(
            {
                "method": kind,
                "attention": attention,
                "ran": info["attention"],
                "compile": compiled,
                "seconds": statistics.median(times[kind, attention, compiled]),
                "warmup_s": info["warmup_s"],
                "hit_rate": None if cache is None else cache.stats(since=info["looked"])["source_cache_hit_rate"],
            }
        )
    return {
        "rows": rows,
        "small": small,
        "batch": batch_size,
        "length": max_length,
        "steps": steps,
        "threads": torch.get_num_threads(),
    }


def table(result: dict[str, Any]) -> str:
    """:func:`measure`'s rows as Markdown, each step ÷ LoRA's first path (eager, uncompiled) and ÷ its own
    method's first path."""
    rows = result["rows"]
    plain = {}  # each method's first path measured: eager and uncompiled where it was (PATHS' order)
    for r in rows:
        plain.setdefault(r["method"], r)
    base = plain.get("lora", rows[0])
    model = "tiny models" if result["small"] else "XLM-R base shape"
    lines = [
        f"Attention and compile paths: {model}, batch {result['batch']} x {result['length']}, "
        f"{result['threads']} threads, median of {result['steps']} steps interleaved across the paths:",
        "",
        f"| method | attention (ran) | compile | step (s) | ÷ {base['method']}, {base['attention']}, compile "
        f"{'on' if base['compile'] else 'off'} | ÷ its first path | warm-up (s) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['attention']} ({r['ran']}) | {'on' if r['compile'] else 'off'} "
            f"| {r['seconds']:.3f} | {r['seconds'] / base['seconds']:.2f} "
            f"| {r['seconds'] / plain[r['method']]['seconds']:.2f} "
            f"| {r['warmup_s']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="the tiny models (a smoke run)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path (the median is reported)")
    parser.add_argument("--no-compile", action="store_true", help="the uncompiled paths only (no minutes compiling)")
    parser.add_argument("--compile-only", action="store_true", help="sdpa, compile off and on")
    parser.add_argument(
        "--models",
        type=Path,
        default=Path(tempfile.gettempdir()) / "flare_ray-bench-models",
        help="where the benchmark models are built (once)",
    )
    parser.add_argument("--results", type=Path, default=Path("-"), help="a Markdown file to append the table to")
    args = parser.parse_args(argv)
    import warnings

    import transformers
    from common import report

    from flare_ray.logs import quiet_libraries

    quiet_libraries()
    warnings.filterwarnings("ignore")  # dynamo's and transformers' notes on what they trace
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    batch, length = (8, 64) if args.small else (16, 128)
    paths = UNCOMPILED if args.no_compile else [("sdpa", False), ("sdpa", True)] if args.compile_only else PATHS
    result = measure(args.models, small=args.small, steps=args.steps, batch_size=batch, max_length=length, paths=paths)
    report(table(result), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

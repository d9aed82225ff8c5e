"""The benchmarks of issue 15 in one run, on this machine, with ratios to LoRA (targets are benchmarks, not
tests: nothing here asserts a time).

    python benchmarks/run.py                 # everything; appends the results to benchmarks/RESULTS.md
    python benchmarks/run.py --small         # tiny models and a short sweep: a smoke run (the suite runs it)

1. step time of LoRA, FLARE (source pass every step), FLARE with the source cache, FLARE-MT (both ways) and
   input-level fusion on one model and the same batches (``benchmarks/steps.py``);
2. trial start-up: seconds from a trial's start (and from its process's start) to its first training step,
   for the first trial of a sweep and the later ones (``startup/*`` metrics of a real sweep's MLflow runs);
3. ``--dry-run`` of the quickstart, in a fresh process; 4. the quickstart's wall time (not with --small);
5. the padding among the computed positions of NusaX Javanese's training batches, plain, length-grouped and
   padding-free (``benchmarks/padding.py``: no model, seconds);
6. LoRA and FLARE cached with eager and SDPA attention (``benchmarks/paths.py``; torch.compile too when run
   alone: compiling takes minutes on a CPU);
7. the goodput of the quickstart's sweep (with --small: of the start-up sweep), from its parent MLflow run
   (``benchmarks/goodput.py``);
then issue 31's CPU rows, as measured in this run, beside the figures the issue started from.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"
TARGETS = {"flare_cached": 1.10, "flare_mt_cached": 1.15, "flare": 1.5}  # step time ÷ LoRA's, at most
# issue 31's CPU figures before its changes (benchmarks/RESULTS.md, 2026-12-04 and 2026-12-06; the quickstart at 962407e)
BEFORE = {"llama": 0.327, "xlm-roberta": 0.561, "flare_cached": 1.19, "flare_mt_cached": 1.25, "goodput": 0.48}


def tune(storage: Path, *overrides: str, yaml: Path = QUICKSTART, dry_run: bool = False) -> float:
    """Seconds of one `python -m flare_ray.tune` in a fresh process (it must succeed)."""
    command = [sys.executable, "-m", "flare_ray.tune", str(yaml), "--set", f"storage_path={storage}"]
    command += [x for o in overrides for x in ("--set", o)] + (["--dry-run"] if dry_run else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "RAY_ADDRESS": "local"}
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def startup(storage: Path, trials: int) -> dict[str, float]:
    """A FLARE sweep of ``trials`` one-epoch trials, one at a time; their start-up metrics, in start order."""
    from mlflow.tracking import MlflowClient

    tune(
        storage,
        "search.grid={}",
        "search.seeds=null",
        f"search.num_samples={trials}",
        "search.max_concurrent_trials=1",
        "training.epochs=1",
        "model.stage1=null",
        "name=startup",
    )
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("startup")
    runs = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    runs.sort(key=lambda r: r.info.start_time)
    trial = [r.data.metrics["startup/trial_seconds"] for r in runs]
    process = [r.data.metrics["startup/process_seconds"] for r in runs]
    return {
        "first_trial_s": trial[0],
        "later_trials_s": statistics.median(trial[1:]),
        "first_process_s": process[0],
        "trials": len(runs),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="tiny models, few steps, a 3-trial sweep (smoke run)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (the median is reported)")
    parser.add_argument("--trials", type=int, default=4, help="trials of the start-up sweep")
    parser.add_argument(
        "--models",
        type=Path,
        default=Path(tempfile.gettempdir()) / "flare_ray-bench-models",
        help="where the benchmark models are built (once)",
    )
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "benchmarks" / "RESULTS.md",
        help="the Markdown file the results are appended to ('-': none)",
    )
    args = parser.parse_args(argv)
    import goodput
    import padding
    import paths
    import steps
    import torch
    import transformers
    from common import report

    from flare_ray.logs import log_to_file, quiet_libraries

    log = log_to_file(Path(tempfile.gettempdir()) / "flare_ray-benchmark.log")  # the libraries' messages
    print(f"(library messages: {log})")
    quiet_libraries()
    warnings.filterwarnings("ignore", category=FutureWarning)
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    batch, length = (8, 64) if args.small else (16, 128)
    print(
        f"1. step time, batch {batch} x {length} tokens, {'tiny models' if args.small else 'XLM-R base shape'} "
        f"({torch.get_num_threads()} threads)",
        flush=True,
    )
    times = steps.run(
        args.models,
        small=args.small,
        warmup=2,
        steps=2 if args.small else args.steps,
        batch_size=batch,
        max_length=length,
    )
    lora = times["lora"]["seconds"]
    with tempfile.TemporaryDirectory() as tmp:
        print("2. trial start-up (a FLARE sweep, one trial at a time)", flush=True)
        start = startup(Path(tmp) / "startup", 3 if args.small else args.trials)
        print("3. --dry-run of the quickstart", flush=True)
        dry = tune(Path(tmp) / "dry", dry_run=True)
        wall = None
        if not args.small:
            print("4. the quickstart", flush=True)
            wall = tune(Path(tmp) / "quickstart")
        sweep = ("startup", "startup") if args.small else ("quickstart", "quickstart")
        good = goodput.read(Path(tmp) / sweep[0] / "mlflow.db", experiment=sweep[1])
    print("5. padding among the computed positions, NusaX jav (plain shuffle, group_by_length)", flush=True)
    padded = padding.measure(epochs=1 if args.small else 2)
    print("6. attention paths: eager and SDPA (benchmarks/paths.py)", flush=True)
    attention = paths.measure(
        args.models,
        small=args.small,
        steps=2 if args.small else args.steps,
        batch_size=batch,
        max_length=length,
        paths=paths.UNCOMPILED,
    )
    lines = [
        f"## {datetime.date.today()} · {platform.node()} · {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs{', ' + torch.cuda.get_device_name() if torch.cuda.is_available() else ''}",
        "",
        f"torch {torch.__version__}, transformers {transformers.__version__}; batch {batch} x {length}"
        f"{' (--small: tiny models)' if args.small else ', XLM-R base shape (12 x 768), MT encoder NLLB-600M shape'}",
        "",
        "| method | step (s) | ÷ LoRA | target | source cache hits |",
        "| --- | ---: | ---: | --- | ---: |",
    ]
    for kind, row in times.items():
        target = f"≤ {TARGETS[kind]:.2f}×" if kind in TARGETS else ""
        if kind == "input_fusion":
            target = f"≥ 2× FLARE cached ({row['seconds'] / times['flare_cached']['seconds']:.2f}×)"
        hits = "" if row["hit_rate"] is None else f"{row['hit_rate']:.0%}"
        lines.append(f"| {kind} | {row['seconds']:.3f} | {row['seconds'] / lora:.2f} | {target} | {hits} |")
    lines += [
        "",
        f"- trial start-up, from the trial's start to its first training step: first trial "
        f"{start['first_trial_s']:.1f} s ({start['first_process_s']:.1f} s from its process's start), later trials "
        f"{start['later_trials_s']:.1f} s (median of {start['trials'] - 1}; Tune reuses the process); target ≤ 5 s",
        f"- `--dry-run` of the quickstart: {dry:.1f} s",
    ]
    if wall is not None:
        lines.append(f"- the quickstart (`python -m flare_ray.tune search_spaces/quickstart.yaml`): {wall:.0f} s")
    lines += [
        "",
        padding.table(padded),
        "",
        paths.table(attention),
        "",
        goodput.table([good], [f"the {good['experiment']} sweep"]),
        "",
        issue31(times, padded, good),
    ]
    report("\n".join(lines) + "\n", args.results)
    return 0


def issue31(times: dict, padded: list[dict], good: dict) -> str:
    """Issue 31's CPU rows: this run's figures beside the issue's starting point and goal."""
    lora = times["lora"]["seconds"]
    pad = {(r["tokenizer"], r["batch"], r["method"]): r for r in padded}
    llama, xlmr = pad.get(("llama", 32, "LoRA")), pad.get(("xlm-roberta", 64, "LoRA"))
    share = lambda x: f"{100 * x:.1f} %"  # noqa: E731
    rows = [
        (
            "padding, tiny Llama tokenizer, NusaX jav, batch 32 (LoRA): plain / group_by_length / its window "
            "of 8 batches / padding_free",
            share(BEFORE["llama"]),
            "≤ 5 %",
            " / ".join(share(llama[k]) for k in ("plain", "grouped", "windowed", "padding_free")) if llama else "—",
        ),
        (
            "padding, tiny XLM-R tokenizer, batch 64 (LoRA): plain / group_by_length / its window of 8 batches",
            share(BEFORE["xlm-roberta"]),
            "≤ 5 %",
            " / ".join(share(xlmr[k]) for k in ("plain", "grouped", "windowed")) if xlmr else "—",
        ),
    ]
    for kind, goal in (("flare_cached", "≤ 1.10"), ("flare_mt_cached", "≤ 1.15")):
        if kind in times:
            rows.append(
                (f"{kind} ÷ LoRA step, CPU", f"{BEFORE[kind]:.2f}", goal, f"{times[kind]['seconds'] / lora:.2f}")
            )
    rows.append(
        (
            f"sweep goodput ({good['experiment']}, CPU)",
            f"{100 * BEFORE['goodput']:.0f} % (quickstart)",
            "≥ 80 %",
            f"{100 * good['goodput']:.0f} %",
        )
    )
    lines = ["Issue 31's CPU rows:", "", "| figure | before | goal | this run |", "| --- | ---: | ---: | ---: |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

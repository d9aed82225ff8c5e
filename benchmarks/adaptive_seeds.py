"""Adaptive seeds against a fixed seed grid (issue 30, item 2): trials run and the selected cell.

For each grid: the fixed grid with every seed (``search.seeds: [start, ..., start + max - 1]``) runs once for real
(``python -m flare_ray.tune``, a local Ray, its own MLflow store); adaptive seeds (``{min, max}``) are then replayed on
its recorded trials: each round's decision is :func:`flare_ray.search.seeding.decide` on the per-example validation
predictions of the seeds the cells have so far (each trial's checkpoint), exactly as the searcher makes it; a seed
on CPU gives the same trial whichever sweep runs it, so the replay's trials are the adaptive sweep's. With
``--confirm`` the adaptive sweep also runs for real, and its trials and selection are printed beside the replay's.

    python benchmarks/adaptive_seeds.py                     # the quickstart's grid and a 6-cell toy grid
    python benchmarks/adaptive_seeds.py --only toy --confirm
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flare_ray.search.seeding import decide  # noqa: E402
from flare_ray.selection import best_configuration  # noqa: E402

ENV = {"RAY_TRAIN_V2_ENABLED": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
# name -> (YAML, overrides, min, max, metric)
GRIDS = {
    "quickstart": ("search_spaces/quickstart.yaml", [], 2, 5, "validation/macro_f1"),
    "toy": (  # six learning rates; 1e-6 cannot learn in three epochs: one clearly worse cell
        "tests/configs/small-flare-search.yaml",
        [
            "training.epochs=3",
            "search.scheduler=null",
            "search.space={}",
            "search.num_samples=null",
            "search.grid={training.learning_rate: [1.0e-6, 1.0e-2, 2.0e-2, 3.0e-2, 4.0e-2, 5.0e-2]}",
            "search.metric=validation/accuracy",
            "task.max_records={train: 500, validation: 200, test: 64}",
        ],
        2,
        4,
        "validation/accuracy",
    ),
}


def sweep(yaml: str, overrides: list[str], storage: Path) -> float:
    """Run one sweep; its wall time in seconds."""
    command = [sys.executable, "-m", "flare_ray.tune", yaml, "--set", f"storage_path={storage}"]
    for override in overrides:
        command += ["--set", override]
    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "MLFLOW_TRACKING_URI"}} | ENV
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sweep failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def trials(storage: Path, metric: str) -> pd.DataFrame:
    """One row per finished trial of the sweep in ``storage``: its configuration, seed, best validation score
    and validation predictions (read from its checkpoint)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    rows = []
    for run in client.search_runs([experiment.experiment_id], max_results=10000):
        tags = run.data.tags
        if "mlflow.parentRunId" not in tags or f"best/{metric}" not in run.data.metrics:
            continue
        frame = pd.read_parquet(Path(tags["best_checkpoint"]) / "predictions" / "validation.parquet")
        rows.append(
            {
                "configuration": tags["flare_ray.configuration"],
                "seed": int(tags["flare_ray.seed"]),
                "validation": run.data.metrics[f"best/{metric}"],
                "frame": frame,
                "reason": tags.get("flare_ray.seed_reason"),
                "started": run.info.start_time,  # the order they ran: the grid's (ties in selection break by it)
            }
        )
    return pd.DataFrame(rows).sort_values("started", kind="stable").drop(columns="started").reset_index(drop=True)


def replay(fixed: pd.DataFrame, low: int, high: int, metric: str, mode: str = "max") -> tuple[int, str, list]:
    """Adaptive seeds on the fixed grid's trials: the trials they run, the cell they select, and each round's
    seeds per cell."""
    cells = list(dict.fromkeys(fixed["configuration"]))
    seeds = sorted(set(fixed["seed"]))
    runs = {cell: low for cell in cells}
    history = []
    while True:
        used = [fixed[(fixed["configuration"] == c) & fixed["seed"].isin(seeds[: runs[c]])] for c in cells]
        history.append([runs[c] for c in cells])
        decision = decide(
            [list(u["frame"]) for u in used],
            [list(u["validation"]) for u in used],
            [runs[c] for c in cells],
            maximum=high,
            metric=metric.partition("/")[2],
            mode=mode,
        )
        if not decision.given:
            break
        for index in decision.given:
            runs[cells[index]] += 1
    chosen, _ = best_configuration(pd.concat(used)[["configuration", "validation"]], mode)
    return sum(runs.values()), chosen, history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=list(GRIDS), action="append")
    parser.add_argument("--confirm", action="store_true", help="also run the adaptive sweep for real")
    parser.add_argument("--keep", type=Path, help="keep the sweeps' storage here (default: a temporary folder)")
    parser.add_argument("--reuse", action="store_true", help="read a fixed sweep already in --keep, not run it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="adaptive-seeds-"))
    for name in args.only or list(GRIDS):
        yaml, overrides, low, high, metric = GRIDS[name]
        fixed_storage = root / f"{name}-fixed"
        seconds = math.nan
        if not (args.reuse and (fixed_storage / "mlflow.db").exists()):
            seconds = sweep(yaml, [*overrides, f"search.seeds={list(range(high))}"], fixed_storage)
        fixed = trials(fixed_storage, metric)
        chosen, _ = best_configuration(fixed[["configuration", "validation"]], "max")
        n, adaptive, history = replay(fixed, low, high, metric)
        print(f"## {name}: {fixed['configuration'].nunique()} cells, seeds {{min: {low}, max: {high}}}, {metric}")
        print(f"fixed {high} seeds: {len(fixed)} trials ({seconds:.0f} s), selects {chosen}")
        print(
            f"adaptive (replayed): {n} trials ({1 - n / len(fixed):.0%} fewer), selects {adaptive}"
            f" ({'the same' if adaptive == chosen else 'a different'} cell); seeds per cell by round: {history}"
        )
        if args.confirm:
            real_storage = root / f"{name}-adaptive"
            seconds = sweep(yaml, [*overrides, f"search.seeds={{min: {low}, max: {high}}}"], real_storage)
            real = trials(real_storage, metric)
            picked, _ = best_configuration(real[["configuration", "validation"]], "max")
            same = sorted(zip(real["configuration"], real["seed"])) == sorted(
                (c, s) for c, runs in zip(dict.fromkeys(fixed["configuration"]), history[-1]) for s in range(runs)
            )
            print(
                f"adaptive (run): {len(real)} trials ({seconds:.0f} s), selects {picked}; the replay's trials: "
                f"{'yes' if same else 'no'}"
            )
        print(json.dumps({"grid": name, "fixed": len(fixed), "adaptive": n, "same_selection": adaptive == chosen}))


if __name__ == "__main__":
    main()

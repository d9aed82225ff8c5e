"""How planning a sweep scales with its grid (issue 28, item 9): the quickstart with a grid of 1,000 to
1,000,000 cells (learning rate x LoRA rank x weight decay x LoRA dropout, three seeds each), timed in this
process, step by step:

* schema: the config validated (``ExperimentConfig``), as ``load_experiment`` does first;
* space check: the search space and every cell of the grid checked against it (``search_space_problems``);
* dry run: ``--dry-run``'s text (``dry_run_text``); schema + space check + dry run is ``--dry-run``;
* sweep plan: what the sweep plans before Ray starts its searches (``plan_searches``, ``run_plan_text``);
* first trial: the first trial config Tune makes from the search (``tune_config``'s searcher or grid;
  imports Ray, starts no cluster).

Wall seconds of one run; a step still running after ``--limit`` seconds is shown as ``> limit`` and is
skipped for the larger grids. Asserts nothing: tests/unit/test_plan_scale.py checks the complexity by
counting.

    python benchmarks/plan_scale.py                          # 1,000 to 1,000,000 cells
    python benchmarks/plan_scale.py --cells 1000 10000 --limit 60
    python benchmarks/plan_scale.py --space --cells 1000 10000  # and a TPE search in every cell
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

STEPS = ("schema", "space check", "dry run", "sweep plan", "first trial")
SPACE = {"type": "float", "low": 0.0, "high": 0.2}  # with --space: sampled in every cell


def grid(cells: int) -> dict[str, list[Any]]:
    """A grid of ``cells`` cells (a multiple of 1,000): 10 x 10 x 10 x ``cells / 1000`` values."""
    last = max(cells // 1000, 1)
    return {
        "training.learning_rate": [round(1e-4 * (i + 1), 6) for i in range(10)],
        "method.lora.r": [4 * (i + 1) for i in range(10)],
        "training.weight_decay": [round(0.01 * i, 4) for i in range(10)],
        "method.lora.dropout": [i / (2 * last) for i in range(last)],
    }


class TooLong(Exception):
    pass


def timed(step: Callable[[], Any], limit: float) -> tuple[float | None, Any]:
    """Seconds ``step`` took and what it returned; None seconds when it ran past ``limit`` (stopped)."""

    def stop(_signum, _frame):
        raise TooLong

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, limit)
    started = time.perf_counter()
    try:
        value = step()
        return time.perf_counter() - started, value
    except TooLong:
        return None, None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def first_trial(search) -> dict[str, Any]:
    """The first trial config Tune makes for ``search`` (its searcher, or Ray Tune's grid and seeds)."""
    from ray.tune.experiment import Experiment
    from ray.tune.search import BasicVariantGenerator, Searcher, SearchGenerator

    from flare_ray.search.searches import tune_config

    tune, param_space = tune_config(search, None)
    algorithm = tune.search_alg or BasicVariantGenerator()
    if isinstance(algorithm, Searcher):
        algorithm = SearchGenerator(algorithm)
    algorithm.set_search_properties(None, None, param_space)
    with tempfile.TemporaryDirectory() as storage:
        experiment = Experiment(
            search.name, lambda config: None, config=param_space, num_samples=tune.num_samples, storage_path=storage
        )
        algorithm.add_configurations([experiment])
        trial = algorithm.next_trial()
    return trial.config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--limit", type=float, default=120.0, help="seconds a step may take (default 120)")
    parser.add_argument("--space", action="store_true", help="a search space too: a TPE search per cell")
    args = parser.parse_args(argv)

    import ray.tune.experiment  # noqa: F401

    import flare_ray.search.searches  # noqa: F401 - Ray's imports, before the timing
    from flare_ray.experiment import ExperimentConfig
    from flare_ray.experiment.space import search_space_problems
    from flare_ray.search.plan import dry_run_text, plan_searches, run_plan_text

    base = yaml.safe_load((REPO / "search_spaces" / "quickstart.yaml").read_text())
    too_long: set[str] = set()
    print(f"{'cells':>10} {'trials':>10} " + " ".join(f"{step:>12}" for step in STEPS) + "  (seconds)")
    for cells in args.cells:
        data = {**base, "search": {**base["search"], "grid": grid(cells)}}
        if args.space:  # two TPE configurations per cell
            data["search"].update(num_samples=2, space={"training.warmup_ratio": SPACE})
        config = None
        row: dict[str, str] = {}

        def run(step: str, call: Callable[[], Any]) -> Any:
            if step in too_long or (step != "schema" and config is None):
                row[step] = "skipped"
                return None
            seconds, value = timed(call, args.limit)
            if seconds is None:
                too_long.add(step)
                row[step] = f"> {args.limit:g}"
            else:
                row[step] = f"{seconds:.2f}"
            return value

        config = run("schema", lambda: ExperimentConfig.model_validate(data))
        problems = run("space check", lambda: search_space_problems(config))
        assert not problems, problems
        run("dry run", lambda: dry_run_text(config))
        searches = run(
            "sweep plan", lambda: (plan_searches(config), run_plan_text(config, {"CPU": 2.0}, Path("x.log")))
        )
        if searches is None:
            row["first trial"] = "skipped"
        else:
            run("first trial", lambda: first_trial(searches[0][0]))
        trials = 3 * cells * (2 if args.space else 1)
        print(f"{cells:>10,} {trials:>10,} " + " ".join(f"{row[step]:>12}" for step in STEPS), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

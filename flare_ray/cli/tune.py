"""``python -m flare_ray.tune SEARCH_SPACE.yaml``: a FLARE hyperparameter sweep on Ray, tracked in MLflow.

On a laptop it starts a local Ray; with ``RAY_ADDRESS`` set (as under
``ray job submit``) it joins that cluster. The YAML is validated before Ray
starts. At the end it prints the best trial per language and where to look in
MLflow.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m flare_ray.tune",
        description="Search FLARE hyperparameters with Ray Tune + Optuna (+ ASHA); every trial is a Ray Train "
        "run and an MLflow child run.",
        epilog="examples:\n"
        "  python -m flare_ray.tune search_spaces/quickstart.yaml\n"
        "  python -m flare_ray.tune search_spaces/rank.yaml --set model.name_or_path=/models/xlmr --dry-run\n"
        "  ray job submit --working-dir . -- python -m flare_ray.tune search_spaces/rank.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="experiment YAML (see search_spaces/)")
    p.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
        help="override a config value (YAML syntax: numbers, lists); repeatable",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and search space; train nothing")
    p.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted sweep of the same name (Tune state, searcher state, MLflow runs)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from flare_ray.experiment import ExperimentConfigError, load_experiment
    from flare_ray.search.plan import dry_run_text

    try:
        config = load_experiment(args.config, args.overrides)
    except ExperimentConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.dry_run:
        print(dry_run_text(config))
        return 0

    import ray

    from flare_ray.search.sweep import SweepInterrupted, run_sweep

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    ray.init(ignore_reinit_error=True)  # RAY_ADDRESS (set by `ray job submit`) joins a cluster; else a local Ray
    try:
        summary = run_sweep(config, resume=args.resume)
    except SweepInterrupted as err:
        print(f"interrupted: {err}", file=sys.stderr)
        return 130
    print()
    print(f"Best trials of sweep '{summary.name}' (selected on {summary.metric}):")
    print(summary.table())
    print()
    report_sweep(config, summary)
    print()
    print(summary.where())
    return 0


def report_sweep(config, summary) -> None:
    """The sweep's report (:mod:`flare_ray.report`), written next to its trials and logged on its parent run."""
    import tempfile

    from flare_ray.cli.report import show
    from flare_ray.report import build_report, log_report
    from flare_ray.storage import local_folder
    from flare_ray.tracking.mlflow_runs import connect

    client = connect(summary.tracking_uri)
    local = local_folder(config.storage_path)
    folder = local / "reports" / config.name if local is not None else Path(tempfile.mkdtemp(prefix="flare_ray-report-"))
    try:
        report = build_report(client, [summary.parent_run_id], folder)
        log_report(client, report)
    except Exception as err:  # noqa: BLE001 - the sweep itself is done and recorded; its report can be made again
        print(f"warning: the report failed ({type(err).__name__}: {err}); make it again with "
              f"python -m flare_ray.report {summary.parent_run_id} --tracking-uri {summary.tracking_uri}", file=sys.stderr)
        return
    print(show(report))

"""``flare-ray stage1 EXPERIMENT.yaml --output DIR`` (or ``python -m flare_ray.stage1``): the stage-1 English fine-tune.

Trains ``stage1.lora`` (default ``method.lora``) on the English side of the
task's training data with the experiment's model, ``stage1.training`` (default
``training``) and scaling settings, and saves the adapter (with its task head)
to DIR. Trials merge it into the base model; point the sweep at it with
``flare-ray tune EXPERIMENT.yaml --set model.stage1=DIR``, or let the
sweep do all of this with ``model.stage1: auto``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  flare-ray stage1 search_spaces/rank.yaml --output outputs/stage1/xlmr-nusax
  flare-ray tune search_spaces/rank.yaml --set model.stage1=outputs/stage1/xlmr-nusax
  flare-ray stage1 search_spaces/quickstart.yaml --output outputs/stage1/tiny --set training.epochs=2"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flare-ray stage1",
        description="Train the stage-1 English fine-tune of an experiment (stage1.lora on the English side of the "
        "task's training data, with its model, training and scaling settings) and save the adapter for its trials.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="experiment YAML (its search section is ignored)")
    p.add_argument(
        "--output", required=True, help="folder (or URI, e.g. s3://bucket/stage1/xlmr) for the stage-1 adapter"
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value (YAML syntax); repeatable",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show every library's output on the console (always in the log file)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from flare_ray.experiment import ExperimentConfigError, load_experiment

    try:
        config = load_experiment(args.config, args.overrides)
    except ExperimentConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if config.model.stage1 not in (None, "auto"):
        print(f"error: model.stage1 is {config.model.stage1}: stage 1 starts from model.name_or_path", file=sys.stderr)
        return 2
    from flare_ray.storage import unwritable

    problem = unwritable(config.storage_path)  # its logs go there
    if problem:
        print(f"error: {config.source}: storage_path: {problem}", file=sys.stderr)
        return 2
    from flare_ray.cli.tune import quiet_environment
    from flare_ray.logs import log_to_file, quiet_libraries, stop_logging_to_file, timestamped
    from flare_ray.search.trial import logs_folder

    quiet_environment(args.verbose)
    log = log_to_file(timestamped(logs_folder(config.storage_path), f"{config.name}-stage1"), verbose=args.verbose)
    from flare_ray.local_ray import init_ray
    from flare_ray.search.stage1 import train_stage1

    quiet_libraries()
    try:
        init_ray(ignore_reinit_error=True, log_to_driver=args.verbose, configure_logging=args.verbose)
        quiet_libraries()
        output = train_stage1(config, args.output)
    finally:
        stop_logging_to_file()
    print(f"stage-1 checkpoint: {output}\nuse it with: --set model.stage1={output}\nlogs: {log}")
    return 0

"""``flare-ray COMMAND ...``: one front end for the project's commands.

``flare-ray tune X.yaml --dry-run`` is ``python -m flare_ray.tune X.yaml --dry-run``: everything after the
command name goes unchanged to that command's own ``main(argv)`` (so ``flare-ray tune --help`` is the tune
help). The command's module is imported only when it runs, so ``flare-ray --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# name -> (module with main(argv), one-line summary); the order is the order of the help.
COMMANDS: dict[str, tuple[str, str]] = {
    "tune": ("flare_ray.cli.tune", "a hyperparameter sweep on Ray Tune, tracked in MLflow"),
    "stage1": ("flare_ray.cli.stage1", "the stage-1 English fine-tune of an experiment"),
    "translate": ("flare_ray.cli.translate", "machine-translate a task's splits with NLLB-200 on Ray Data"),
    "report": ("flare_ray.cli.report", "the report of past sweeps, from MLflow alone"),
    "predict": ("flare_ray.cli.predict", "predict on new text with a trial's adapter"),
    "reproduce": ("flare_ray.cli.reproduce", "run a recorded trial or sweep again and compare it with the original"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("flare_ray")
    except PackageNotFoundError:  # a source tree on sys.path that was never installed
        return "unknown (not installed)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flare-ray",
        description="Ray-distributed hyperparameter search and ablations for FLARE.\n"
        "`flare-ray COMMAND ARGS` is `python -m flare_ray.COMMAND ARGS`; `flare-ray COMMAND --help` shows its options.",
        epilog="examples:\n"
        "  flare-ray tune search_spaces/quickstart.yaml\n"
        "  flare-ray tune search_spaces/rank.yaml --dry-run\n"
        "  flare-ray report quickstart\n\n"
        "documentation: README.md and docs/ in the repository (docs/config-reference.md: every key of the YAML)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (_module, summary) in COMMANDS.items():
        # Listed for the help only: a known command is dispatched before this parser runs (see main).
        sub.add_parser(name, help=summary, add_help=False)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        try:
            result = module.main(argv[1:])
            sys.stdout.flush()  # a closed pipe shows here, not at exit
        except BrokenPipeError:  # `flare-ray tune X.yaml --dry-run | head`: the reader left, not an error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
            return 0
        # tune, stage1, report and predict return an exit status; translate returns its results (success).
        return result if isinstance(result, int) else 0
    p = parser()
    if not argv:
        p.print_help(sys.stderr)
        return 2
    p.parse_args(argv)  # --help / --version exit here; an unknown command is an error (exit status 2)
    p.print_help(sys.stderr)  # not reached in practice: the parser needs a known command or an option
    return 2


def run() -> None:
    """The ``flare-ray`` console script."""
    from flare_ray.cli.tune import exit_promptly

    exit_promptly(main())


if __name__ == "__main__":
    run()

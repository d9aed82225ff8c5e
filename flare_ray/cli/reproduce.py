"""``flare-ray reproduce RUN_ID``: a recorded trial (a child run) or sweep (a parent run) run again, and compared.

Says first what differs from the run's records (commit, packages, data, hardware), then runs it again as a new
sweep through ``flare-ray tune``'s path (:mod:`flare_ray.search.reproduce` builds it), tags the new runs
``flare_ray.reproduces=<RUN_ID>``, and prints each epoch's validation scores and the test scores beside the
original's. Exit status: 0 reproduced (equal to 4 decimals; or different where the hardware differs or the
trials ran on GPUs, the differences printed); 1 the scores differ on the same CPU hardware, or the sweep failed;
2 no such run, or its records cannot be run again (nothing ran); 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from flare_ray.cli.report import DEFAULT_STORE, tracking_uri


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flare-ray reproduce",
        description="Run a recorded trial (a child run id) or sweep (a parent run id) again from its MLflow "
        "records, say first what differs from the recorded commit, packages, data and hardware, and compare the "
        "new run's validation curve and test scores with the original's.",
        epilog="examples:\n"
        "  flare-ray reproduce 3f2c9a...e1 --dry-run\n"
        "  flare-ray reproduce 3f2c9a...e1 --tracking-uri sqlite:///outputs/mlflow.db",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_id", metavar="RUN_ID", help="an MLflow run id: a trial's run or a sweep's parent run")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///{DEFAULT_STORE})",
    )
    p.add_argument("--dry-run", action="store_true", help="say what differs and what would run; run nothing")
    p.add_argument(
        "--verbose", action="store_true", help="also show every library's output on the console (as tune --verbose)"
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from flare_ray.experiment import ExperimentConfigError
    from flare_ray.search import reproduce as rp
    from flare_ray.search.plan import dry_run_text
    from flare_ray.tracking.mlflow_runs import connect

    uri = tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"error: no MLflow store at {uri}; pass --tracking-uri or set MLFLOW_TRACKING_URI", file=sys.stderr)
        return 2
    client = connect(uri)
    try:
        recorded = rp.read_recorded(client, args.run_id)
        stage1, stage1_line = rp.stage1_reuse(recorded)
        name = rp.reproduction_name(client, recorded, recorded.config.get("storage_path", "outputs"))
        config = rp.reproduction_config(recorded, name, uri, stage1)
    except rp.RunNotReproducible as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ExperimentConfigError as err:
        print(f"error: the run's recorded config cannot run here: {err}", file=sys.stderr)
        return 2
    what = (
        f"trial {recorded.run_id} ({recorded.language}, seed {recorded.seed}) of sweep" if recorded.trial else "sweep"
    )
    print(f"reproducing {what} '{recorded.sweep}' (experiment '{recorded.experiment_name}') as '{name}'")
    found = rp.differences(recorded, rp.read_current(config))
    if found:
        print("differs from the run's records:\n" + "\n".join(d.line() for d in found))
    else:
        print("the same commit, packages, data and hardware as recorded")
    print(stage1_line)
    if args.dry_run:
        print(dry_run_text(config))
        return 0
    code, parent = _run(config, args)
    parent = parent or rp.reproduction_parent(client, recorded, name)  # a sweep that failed: its runs tagged too
    if parent is None:
        return code
    reproduced = rp.tag_reproduction(client, parent, recorded.run_id)
    comparison = rp.compare(client, rp.trial_runs(client, recorded), reproduced)
    print(f"\nthe new runs (tagged {rp.REPRODUCES_TAG}={recorded.run_id}) beside the original's:")
    if comparison.equal:
        trials = len({row.trial for row in comparison.rows})
        if trials == 1:  # a sweep's: one line (hundreds of rows, all equal)
            print(comparison.table())
        print(
            f"reproduced: every score equal to {rp.PLACES} decimals ({len(comparison.rows)} scores of {trials} trial(s))"
        )
        return code
    print(comparison.table(only_different=True))
    expected = rp.hardware_differs(found) or not rp.on_cpu(config)
    why = "the hardware differs" if rp.hardware_differs(found) else "the trials ran on GPUs"
    if expected:
        print(f"not equal to {rp.PLACES} decimals: the differences above ({why})")
        return code
    what = f"the scores above differ at {rp.PLACES} decimals" if not comparison.missing else "trials are missing"
    print(
        f"error: not reproduced: {what} on the same CPU hardware"
        + (" (and: " + ", ".join(d.what for d in found) + " differ)" if found else "")
        + f"; the new sweep's parent run: {parent}",
        file=sys.stderr,
    )
    return 1


def _run(config, args) -> tuple[int, str | None]:
    """The sweep through ``flare-ray tune``'s path; its exit status and new parent run (None: none was made)."""
    from flare_ray.cli import tune
    from flare_ray.logs import stop_logging_to_file

    if not tune._ready(config, dry_run=False):
        return 2, None
    tune_args = tune.parser().parse_args([config.name, *(["--verbose"] if args.verbose else [])])
    ending: dict[str, str] = {}
    try:
        code = tune._sweep(config, tune_args, ending)
    except KeyboardInterrupt:
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130, None
    except Exception:  # the driver's own error, as tune prints it: its traceback (MLflow's errors hold the URI)
        from flare_ray.secrets import redact

        print(redact(traceback.format_exc()), end="", file=sys.stderr)
        return 1, None
    finally:
        stop_logging_to_file()
        tune._stop_ray()
    return code, ending.get("parent_run_id")

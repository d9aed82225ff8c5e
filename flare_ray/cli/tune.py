"""``python -m flare_ray.tune SEARCH_SPACE.yaml``: a FLARE hyperparameter sweep on Ray, tracked in MLflow.

On a laptop it starts a local Ray; with ``RAY_ADDRESS`` set (as under
``ray job submit``) it joins that cluster. The YAML is validated before Ray
starts. At the end it prints the best trial per language and where to look in
MLflow.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flare-ray tune",
        description="Search FLARE hyperparameters and run ablations with Ray Tune (a grid, or Optuna + ASHA); "
        "every trial is an MLflow child run. The YAML is checked before Ray starts.",
        epilog="examples:\n"
        "  flare-ray tune search_spaces/quickstart.yaml\n"
        "  flare-ray tune search_spaces/rank.yaml --set model.name_or_path=/models/xlmr --dry-run\n"
        "  flare-ray tune search_spaces/rank.yaml --resume\n"
        "  ray job submit --working-dir . -- python -m flare_ray.tune search_spaces/rank.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", type=Path, help="experiment YAML (see search_spaces/)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY.PATH=VALUE",
        help="override a config value (YAML syntax: numbers, lists); repeatable",
    )
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and search space; train nothing")
    p.add_argument(
        "--estimate",
        action="store_true",
        help="before the sweep (or with --dry-run, instead of it): time a few optimizer steps of each distinct "
        "(model, method, precision, resources) on the cluster, cached in the storage folder, for the cost "
        "estimate; without it the step times come from earlier trials' time records in MLflow, if any",
    )
    p.add_argument(
        "--verbose",
        action="store_true",
        help="also show every library's output on the console, every trial's too (always in the log files)",
    )
    p.add_argument(
        "--status-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between the status tables of every search (default 60)",
    )
    p.add_argument(
        "--notify",
        metavar="COMMAND_OR_URL",
        help="when the sweep ends or fails: POST its summary as JSON to this http(s) webhook, or run this shell "
        "command with the summary on its standard input and in FLARE_RAY_SWEEP, FLARE_RAY_STATUS "
        "(finished|failed|interrupted), FLARE_RAY_SUMMARY; default $FLARE_RAY_NOTIFY. A notification that "
        "fails is a warning",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted sweep of the same name (Tune state, searcher state, MLflow runs)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 every trial finished; 1 some trials failed (the sweep went on) or the sweep failed;
    2 the config is invalid, the tracking server does not answer as MLflow's, this machine can never hold
    a trial's worker, or ``--resume`` finds saved state this sweep did not sign or a changed plan (nothing
    ran); 130 interrupted (``--resume`` continues). Once the sweep has started, its end (any of these) is
    notified where ``--notify`` or ``$FLARE_RAY_NOTIFY`` asks (:mod:`flare_ray.search.notify`)."""
    args = parser().parse_args(argv)
    from flare_ray.experiment import ExperimentConfigError, load_experiment
    from flare_ray.search.plan import dry_run_text

    try:
        config = load_experiment(args.config, args.overrides)
    except ExperimentConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not _ready(config, args.dry_run):
        return 2
    if args.dry_run:
        print(dry_run_text(config, _dry_run_cost(config, args.estimate)))
        return 0
    from flare_ray.logs import stop_logging_to_file
    from flare_ray.secrets import redact

    ending: dict[str, str] = {}  # what the notification says (--notify): _sweep fills it in
    try:
        code = _sweep(config, args, ending)
    except Exception:  # the driver's own error: its traceback, then leave (never hang on a library's thread)
        trace = redact(traceback.format_exc())  # (MLflow's errors hold the URI)
        print(trace, end="", file=sys.stderr)
        ending["summary"] = trace.strip().splitlines()[-1]
        code = 1
    except KeyboardInterrupt:  # outside the searches (starting Ray, stage 1): they handle their own Ctrl-C
        print("interrupted (Ctrl-C)", file=sys.stderr)
        ending["summary"] = "interrupted (Ctrl-C)"
        code = 130
    finally:
        stop_logging_to_file()
        _stop_ray()
    _notify(args.notify, config, code, ending)
    return code


def _notify(option: str | None, config, code: int, ending: dict[str, str]) -> None:
    """The notification of the sweep's end (``--notify`` or ``$FLARE_RAY_NOTIFY``), if one is asked for: a warning
    if it fails, never another exit status."""
    from flare_ray.search.notify import notify, payload, target

    where = target(option)
    if where is None:
        return
    message = payload(
        config.name,
        code,
        ending.get("summary", ""),
        experiment=config.tracking.experiment_name,
        parent_run_id=ending.get("parent_run_id"),
        tracking_uri=ending.get("tracking_uri"),
    )
    warning = notify(where, message)
    if warning:
        print(warning, file=sys.stderr)


def _ready(config, dry_run: bool) -> bool:
    """What is checked before Ray starts beyond the config itself (``load_experiment``), in the dry run too:
    the tracking server answers as MLflow's does (before MLflow's own retries, which take minutes; a server
    that does not answer is only a warning in the dry run, which may run away from the cluster's network), and
    this machine can hold a trial's worker where the sweep starts a local Ray. Prints each error (then False)
    and warning on stderr. First of all, a local ``storage_path`` is a folder this command can write (its logs and
    the default tracking store are there too)."""
    from flare_ray.search.plan import unplaceable_here
    from flare_ray.storage import unwritable
    from flare_ray.tracking.config import NotMLflow, TrackingUnreachable, check_reachable, resolve_tracking_uri

    problem = unwritable(config.storage_path)
    if problem:
        print(f"error: {config.source}: storage_path: {problem}", file=sys.stderr)
        return False
    try:
        check_reachable(resolve_tracking_uri(config))
    except TrackingUnreachable as err:
        if dry_run and not isinstance(err, NotMLflow):
            print(f"warning: {err}", file=sys.stderr)
        else:
            print(f"error: {err}", file=sys.stderr)
            return False
    except ValueError as err:  # no tracking URI for remote storage: the dry run shows it
        if not dry_run:
            print(f"error: {err}", file=sys.stderr)
            return False
    error, warning = unplaceable_here(config)
    if error:
        print(f"error: {config.source}: {error}", file=sys.stderr)
        return False
    if warning:
        print(f"warning: {config.source}: {warning}", file=sys.stderr)
    return True


def _sweep(config, args, ending: dict[str, str]) -> int:
    """The sweep, and its exit status; ``ending``: what its notification says (``summary``, its parent run)."""
    from flare_ray.logs import log_to_file, quiet_libraries, timestamped
    from flare_ray.search.trial import logs_folder

    quiet_environment(args.verbose)
    log = log_to_file(timestamped(logs_folder(config.storage_path), config.name), verbose=args.verbose)
    from flare_ray.local_ray import init_ray
    from flare_ray.search.cluster import joins_a_cluster, probe_cluster
    from flare_ray.search.console import Console
    from flare_ray.search.plan import run_plan_text, unplaceable
    from flare_ray.search.sweep import ResumeRefused, SweepFailed, SweepInterrupted, run_sweep
    from flare_ray.storage import is_disk_full

    quiet_libraries()  # Ray, MLflow and Optuna set up their console handlers when imported

    # RAY_ADDRESS (set by `ray job submit`) joins a cluster; else a local Ray, listening on 127.0.0.1 only.
    # Workers' output stays in the trials' log files (and Ray's) unless --verbose.
    joined = joins_a_cluster()
    init_ray(
        ignore_reinit_error=True, log_to_driver=args.verbose, configure_logging=args.verbose, runtime_env=_runtime_env()
    )
    quiet_libraries()
    console = Console(interval=args.status_interval)
    cluster = probe_cluster(joined)
    problem = unplaceable(config, cluster.nodes, cluster.node_types)
    if problem and cluster.node_types is not None and problem.fits_a_node_type:  # the autoscaler adds one: wait
        console.print(f"waiting: {problem}; the cluster's autoscaler can add a node that holds it")
        logging.getLogger("flare_ray.tune").warning("%s; waiting for the autoscaler to add a node", problem)
    elif problem:
        where = "this machine" if not cluster.joined else "this cluster (no autoscaler can add a node that holds it)"
        print(f"error: {problem}: no trial could ever start on {where}", file=sys.stderr)
        ending["summary"] = f"error: {problem}: no trial could ever start on {where}"
        return 2
    try:
        estimated = _estimates(config, cluster.resources, args.estimate, console.print)
    except Exception as err:  # noqa: BLE001 - the sweep goes on without (its trials say what is wrong, if anything)
        console.print(f"cost: not estimated ({type(err).__name__}: {err})")
        estimated = []
    cost = [line for e in estimated for line in e.lines()] if estimated else None
    console.print(run_plan_text(config, cluster.resources, log, cost))
    guard = _disk_guard(config)
    try:
        with guard or contextlib.nullcontext():
            summary = run_sweep(
                config,
                resume=args.resume,
                console=console,
                resources=cluster.resources,
                estimate=estimated[-1] if estimated and not args.resume else None,  # (a resumed sweep ran before)
            )
    except BaseException as err:  # a full disk first: it stops the sweep in any of the ways below
        ending["summary"] = f"{'interrupted' if isinstance(err, SweepInterrupted) else 'error'}: {err}"
        if (guard is not None and guard.tripped.is_set()) or is_disk_full(err):
            ending["summary"] = f"error: the disk of {config.storage_path} is full; the sweep stopped"
            return _disk_full(config, guard)
        if isinstance(err, ResumeRefused):  # nothing was started or changed
            print(f"error: {err}", file=sys.stderr)
            return 2
        if isinstance(err, SweepInterrupted):
            print(f"interrupted: {err}", file=sys.stderr)
            return 130
        if isinstance(err, SweepFailed):
            print(f"error: {err}\n(the sweep's log: {log})", file=sys.stderr)
            return 1
        raise
    print()
    print(f"Best trials of sweep '{summary.name}' (selected on {summary.metric}):")
    print(summary.table())
    print()
    report_sweep(config, summary)
    print()
    if summary.timing is not None:  # where the trials' time went
        print("\n".join(summary.timing.lines()))
    print(summary.where())
    print(f"logs: {log}")
    ending.update(parent_run_id=summary.parent_run_id, tracking_uri=summary.tracking_uri)
    ending["summary"] = "\n".join(
        [
            f"Best trials of sweep '{summary.name}' (selected on {summary.metric}):",
            summary.table(),
            *(summary.timing.lines() if summary.timing is not None else []),
            summary.where(),
        ]
    )
    if summary.failed:
        print(
            f"{summary.failed} of {summary.trials} trials failed (their errors and logs are above); the others "
            "were selected from",
            file=sys.stderr,
        )
        return 1
    return 0


CALIBRATE_AT_ONCE = 8  # calibrations of a setup run at once at most (as many as the sweep's trials at once)


def _estimates(config, resources, calibrate: bool, say, tracking: bool = True):
    """The sweep's cost estimate(s) (:mod:`flare_ray.search.estimate`; adaptive seeds: with min, then max seeds),
    with the step times known: calibrated (``--estimate``, Ray started), cached, or from earlier trials' records
    (``tracking``: read the tracking store)."""
    from flare_ray.search import estimate
    from flare_ray.tracking.config import resolve_tracking_uri

    counted = estimate.estimates(config, resources)
    uri = resolve_tracking_uri(config) if tracking else None
    at_once = sum(min(search.slots, search.trials) for search in counted[-1].searches)  # (the searches share)
    times = estimate.known_times(config, counted[-1].examples, calibrate, uri, say, min(at_once, CALIBRATE_AT_ONCE))
    stage1 = bool(times) and estimate.stage1_pending(config, exact=tracking)  # (the dry run imports no torch)
    return estimate.estimates(config, resources, times, stage1)


def _dry_run_cost(config, calibrate: bool) -> list[str]:
    """The dry run's cost lines, on this machine's resources where the sweep would start a local Ray: with the
    step times of earlier calibrations (cached), and with ``calibrate`` of new ones (a local Ray runs them). It
    reads no tracking store (the dry run imports no MLflow; the sweep's own plan reads earlier trials' records)."""
    from flare_ray.local_ray import starts_a_local_ray
    from flare_ray.search.estimate import cost_lines
    from flare_ray.search.plan import this_machine

    resources = this_machine() if starts_a_local_ray() else None
    if calibrate:
        quiet_environment(False)
    try:
        made = _estimates(config, resources, calibrate, lambda line: print(line, file=sys.stderr), tracking=False)
    except Exception as err:  # noqa: BLE001 - the dry run shows the rest; the counts say what they can
        print(f"warning: the cost estimate failed ({type(err).__name__}: {err})", file=sys.stderr)
        return cost_lines(config, resources)
    finally:
        if "ray" in sys.modules:  # a calibration started a local Ray (none when every setup's was cached)
            _stop_ray()
    return [line for e in made for line in e.lines()]


def _disk_guard(config):
    """The guard that stops the sweep when the disk of its local storage folder fills up; None for a remote store."""
    from flare_ray.search.disk import DiskGuard
    from flare_ray.storage import local_folder

    folder = local_folder(config.storage_path)
    return DiskGuard(folder) if folder is not None else None


def _disk_full(config, guard) -> int:
    """The disk filled up: the parent run and the runs of the trials still running are marked FAILED with the
    reason (where the tracking store can still be written), and one line says so. Exit status 1."""
    from flare_ray.search.disk import DiskGuard
    from flare_ray.storage import local_folder

    guard = guard or DiskGuard(local_folder(config.storage_path) or Path.cwd())
    line = guard.line()
    _stop_ray()  # the trials write no more: the guard's reserve is for the runs' status
    guard.give_back_reserve()
    try:
        _mark_failed(config, line.removeprefix("error: "))
    except Exception:  # noqa: BLE001 - the store is on the full disk too: what it holds stays as it was
        logging.getLogger("flare_ray.tune").info("the runs could not be marked FAILED", exc_info=True)
        line = line.replace("the runs are marked FAILED", "the runs could not be marked FAILED (the store is full)")
    print(line, file=sys.stderr)
    return 1


def _mark_failed(config, reason: str) -> None:
    """This sweep's parent run, unless it finished, and its children still RUNNING: FAILED, with ``reason``."""
    from flare_ray.tracking import mlflow_runs
    from flare_ray.tracking.callback import ERROR_TAG  # a failed trial's reason, on its run

    client = mlflow_runs.connect(mlflow_runs.resolve_tracking_uri(config))
    experiment = client.get_experiment_by_name(config.tracking.experiment_name)
    parent = experiment and mlflow_runs.find_run(client, experiment.experiment_id, {mlflow_runs.SWEEP_TAG: config.name})
    if parent is None or parent.info.status == "FINISHED":
        return
    children = mlflow_runs.child_runs(client, experiment.experiment_id, parent.info.run_id)
    for run in [*(c for c in children if c.info.status == "RUNNING"), parent]:
        client.set_tag(run.info.run_id, ERROR_TAG, reason)
        client.set_terminated(run.info.run_id, "FAILED")


def _runtime_env() -> dict | None:
    """Environment the trials' processes need on a cluster, whose workers do not inherit this command's: the
    injected faults of the fault-tolerance tests (:mod:`flare_ray.training.faults`), when set."""
    from flare_ray.training.faults import ENV

    return {"env_vars": {ENV: os.environ[ENV]}} if os.environ.get(ENV) else None


def quiet_environment(verbose: bool) -> None:
    """Settings of Ray read from the environment, before Ray starts (its workers inherit them)."""
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Ray Train's workers send every print to its logger, even one a library captures (dill prints a
    # function's disassembly into a buffer to find its globals, which then reached the console).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    if not verbose:
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's legacy reporter at verbose=0 prints nothing:
        # the console callback prints each trial's epochs and the status table instead
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # datasets' bars for quick .map()s


def _stop_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


def exit_promptly(code: int) -> None:
    """The command's exit: flush the console, and if a library left a non-daemon thread that would keep the
    process alive after the sweep (which is over and recorded), do not wait for it."""
    import threading

    sys.stdout.flush()
    sys.stderr.flush()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        os._exit(code)
    sys.exit(code)


def report_sweep(config, summary) -> None:
    """The sweep's report (:mod:`flare_ray.report`), written next to its trials and logged on its parent run."""
    import tempfile

    from flare_ray.cli.report import show
    from flare_ray.report import build_report, log_report
    from flare_ray.secrets import redact
    from flare_ray.storage import local_folder
    from flare_ray.tracking.mlflow_runs import connect

    client = connect(summary.tracking_uri)
    local = local_folder(config.storage_path)
    folder = (
        local / "reports" / config.name if local is not None else Path(tempfile.mkdtemp(prefix="flare_ray-report-"))
    )
    try:
        report = build_report(client, [summary.parent_run_id], folder)
        log_report(client, report)
    except Exception as err:  # noqa: BLE001 - the sweep itself is done and recorded; its report can be made again
        print(
            f"warning: the report failed ({type(err).__name__}: {redact(str(err))}); make it again with "
            f"python -m flare_ray.report {summary.parent_run_id} --tracking-uri {redact(summary.tracking_uri)}",
            file=sys.stderr,
        )
        return
    print(show(report))

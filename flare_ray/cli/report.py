"""``python -m flare_ray.report SWEEP [SWEEP ...]``: the report of past sweeps, from MLflow alone.

SWEEP is a sweep's name (its newest parent run) or a parent run id; several sweeps (e.g. one per task)
join into one table. Writes report.md, report.csv, report.html, report.tex and the PNG figures to ``--output``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_STORE = Path("outputs/mlflow.db")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flare-ray report",
        description="Methods (or grid cells) x languages: mean ± std over seeds of the gold-test metric, the best "
        "marked, paired-bootstrap p-values against the best, and figures; from the sweeps' MLflow records.",
        epilog="examples:\n"
        "  flare-ray report quickstart\n"
        "  flare-ray report paper-table1-xnli paper-table1-nusax --output reports/table1\n"
        "  flare-ray report 3f2c...e1 --tracking-uri http://mlflow:5000 --log-to-mlflow",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("sweeps", nargs="+", metavar="SWEEP", help="sweep name or parent run id")
    p.add_argument(
        "--tracking-uri",
        default=None,
        help=f"MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///{DEFAULT_STORE})",
    )
    p.add_argument("--output", type=Path, default=None, help="folder for the report (default: reports/<sweeps>)")
    p.add_argument("--resamples", type=int, default=None, help="bootstrap resamples (default 1000)")
    p.add_argument("--seed", type=int, default=None, help="the bootstrap's random seed (default 0)")
    p.add_argument(
        "--baseline",
        metavar="ROW",
        default=None,
        help="a row's name or method (e.g. lora): every other row's difference to it, with its paired-bootstrap "
        "95%% interval and p-value (default: the sweep's report.baseline, else none)",
    )
    p.add_argument(
        "--log-to-mlflow",
        action="store_true",
        help="also put the report on each sweep's parent run and in its model versions' descriptions",
    )
    return p


def tracking_uri(given: str | None) -> str:
    return given or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{DEFAULT_STORE.as_posix()}"


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    uri = tracking_uri(args.tracking_uri)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        print(f"error: no MLflow store at {uri}; pass --tracking-uri or set MLFLOW_TRACKING_URI", file=sys.stderr)
        return 2
    from mlflow.exceptions import MlflowException

    from flare_ray.report import ReportError, build_report, log_report
    from flare_ray.secrets import redact
    from flare_ray.significance import RESAMPLES, SEED
    from flare_ray.tracking.mlflow_runs import connect

    client = connect(uri)
    folder = args.output or Path("reports") / "+".join(args.sweeps)
    try:
        report = build_report(
            client,
            args.sweeps,
            folder,
            args.resamples or RESAMPLES,
            SEED if args.seed is None else args.seed,
            args.baseline,
        )
        if args.log_to_mlflow:
            log_report(client, report)
    except ReportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except MlflowException as err:  # its message may hold the tracking URI: shown without credentials
        print(f"error: MLflow at {redact(uri)}: {redact(str(err))}", file=sys.stderr)
        return 1
    print(show(report, uri))
    return 0


def show(report, uri: str | None = None) -> str:
    """The table, its notes and where the files are, for the console; with the tracking ``uri``, the address
    of each sweep's runs table in MLflow's UI (in the view the sweep shared, as the sweep printed it)."""
    from flare_ray.tracking.mlflow_runs import VIEW_TAG
    from flare_ray.tracking.urls import runs_url, ui_command

    published = ["The paper's numbers:", "", report.published, ""] if report.published else []
    return "\n".join(
        [
            report.title,
            "",
            report.markdown,
            "",
            *published,
            *report.notes,
            "",
            "report: " + ", ".join(str(p) for p in report.files[:4]),
            "figures: " + ", ".join(str(p) for p in report.figures),
            *(
                f"MLflow: {runs_url(uri, s.experiment_id, view=s.tags.get(VIEW_TAG), metric=s.metric, mode=s.mode)}"
                + (f"  (start the UI: {ui_command(uri)})" if not uri.startswith(("http://", "https://")) else "")
                for s in (report.sweeps if uri else [])
            ),
        ]
    )

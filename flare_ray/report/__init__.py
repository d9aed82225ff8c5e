"""The report of an ablation: which method (or grid cell) is better, per language, and how sure that is.

``python -m flare_ray.report SWEEP [SWEEP ...]`` (also run by ``python -m flare_ray.tune`` at the end of a
sweep): a table of rows (methods or grid cells) x languages, mean ± std over seeds of the gold-test metric,
the best marked, a paired-bootstrap p-value of the best against every other row (Holm-corrected per column),
with a baseline row every row's difference to it and its 95 % interval, the chosen hyperparameters, and
figures with captions; as Markdown, CSV, LaTeX and a self-contained HTML page, built from MLflow alone.

The paired bootstrap, Δ with its interval and Holm's correction are :mod:`flare_ray.significance` (shared with
the sweep's adaptive seeds). Its names are imported when first used (PEP 562), so ``python -m flare_ray.report --help`` imports neither
MLflow, pandas nor matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .build import Report, build_report, log_report
    from .records import ReportError, SweepRecords, load_sweep

_WHERE = {
    "Report": "build",
    "build_report": "build",
    "log_report": "build",
    "ReportError": "records",
    "SweepRecords": "records",
    "load_sweep": "records",
}
__all__ = [
    "Report",
    "ReportError",
    "SweepRecords",
    "build_report",
    "load_sweep",
    "log_report",
]


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)

"""The report of an ablation: which method (or grid cell) is better, per language, and how sure that is.

``python -m flare_ray.report SWEEP [SWEEP ...]`` (also run by ``python -m flare_ray.tune`` at the end of a
sweep): a table of rows (methods or grid cells) x languages, mean ± std over seeds of the gold-test metric,
the best marked, a paired-bootstrap p-value of the best against every other row, and figures; as
Markdown, CSV and a self-contained HTML page, built from MLflow alone.
"""

from .build import Report, build_report, log_report
from .records import ReportError, SweepRecords, load_sweep
from .significance import paired_bootstrap

__all__ = ["Report", "ReportError", "SweepRecords", "build_report", "load_sweep", "log_report", "paired_bootstrap"]

"""The table as people read it: Markdown (console, MLflow), and one self-contained HTML page."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from .table import AVERAGE, Column

NOT_PAPER = "‡"  # a column whose data, splits or model are not the paper's setting


def score(line) -> str:
    """``84.46 ± 0.51 (n=5)``; n of seeds scored on test (``3 of 5`` when some trials were not)."""
    if line is None or not isinstance(line["mean"], float) or math.isnan(line["mean"]):
        return "–"
    text = f"{line['mean']:.2f}"
    if isinstance(line.get("std"), float) and not math.isnan(line["std"]):
        text += f" ± {line['std']:.2f}"
    trials = line.get("trials")
    n = int(line["n"])
    return text + (
        f" (n={n} of {int(trials)})"
        if isinstance(trials, (int, float)) and trials == trials and trials > n
        else f" (n={n})"
    )


def p_value(line) -> str:
    if line is None:
        return "–"
    if line["best"]:
        return "best"
    p = line.get("p_value")
    if not isinstance(p, float) or math.isnan(p):
        return "–"
    return f"{p:.3f}" + ("*" if line["significant"] else "")


def wide(table: pd.DataFrame, columns: list[Column], bold: tuple[str, str]) -> pd.DataFrame:
    """Rows × (column, its p-value) + average, as display strings; the best per column in ``bold``."""
    rows = list(dict.fromkeys(table["row"]))
    multiple = len(rows) > 1
    names = [c.name for c in columns] + ([AVERAGE] if AVERAGE in set(table["column"]) else [])
    deviating = {c.name for c in columns if c.deviations}
    out = {}
    for name in names:
        header = name + (f" {NOT_PAPER}" if name in deviating else "")
        lines = {r["row"]: r for _, r in table[table["column"] == name].iterrows()}
        out[header] = [
            bold[0] + score(lines[r]) + bold[1] if r in lines and lines[r]["best"] else score(lines.get(r))
            for r in rows
        ]
        if multiple and name != AVERAGE:
            out[f"{name} p"] = [p_value(lines.get(r)) for r in rows]
    return pd.DataFrame({"row": rows, **out})


def markdown(table: pd.DataFrame, columns: list[Column]) -> str:
    return wide(table, columns, ("**", "**")).to_markdown(index=False)


def image_tag(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(path.name)}</figcaption></figure>'


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr th {{ text-align: center; }}
thead th {{ background: #f3f3f3; }}
figure {{ display: inline-block; margin: 1em 1em 1em 0; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
.note {{ color: #555; font-size: 0.92em; }}
</style></head>
<body>
<h1>{title}</h1>
{intro}
<table id="report">{table}</table>
{paper}<div class="note">{notes}</div>
<h2>Figures</h2>
{figures}
</body></html>
"""


def html_page(
    title: str,
    intro: list[str],
    table: pd.DataFrame,
    columns: list[Column],
    notes: list[str],
    figures: list[Path],
    paper: pd.DataFrame | None = None,
) -> str:
    """The report as one HTML page; ``paper``: the paper's matching cells (rows × columns), as a second table."""
    frame = wide(table, columns, ("\x00b", "\x00/b"))  # placeholders survive escaping, then become <b>
    body = frame.to_html(escape=True, border=0, index=False)
    body = body.replace("\x00b", "<b>").replace("\x00/b", "</b>")
    body = body.split(">", 1)[1].rsplit("</table>", 1)[0]  # keep our own <table id=report>
    return PAGE.format(
        title=html.escape(title),
        intro="\n".join(f"<p>{html.escape(p)}</p>" for p in intro),
        table=body,
        notes="".join(f"<p>{html.escape(n)}</p>" for n in notes),
        figures="\n".join(image_tag(f) for f in figures),
        paper=""
        if paper is None
        else '<h2>The paper\'s numbers</h2>\n<table id="paper">'
        + paper.to_html(escape=True, border=0, index=False).split(">", 1)[1].rsplit("</table>", 1)[0]
        + "</table>\n",
    )

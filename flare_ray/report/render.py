"""The table as people read it: Markdown (console, MLflow), LaTeX (booktabs, for a paper) and one self-contained
HTML page."""

from __future__ import annotations

import base64
import html
import math
from pathlib import Path

import pandas as pd

from flare_ray.significance import LEVEL

from .table import AVERAGE, Column, average_deviations

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


def _p(p) -> str:
    return f"{p:.3f}" + ("*" if p < LEVEL else "")


def _missing(value) -> bool:
    return not isinstance(value, float) or math.isnan(value)


def p_value(line) -> str:
    """The p-value against the column's best row, Holm-corrected (``p_holm``; the raw one where not)."""
    if line is None:
        return "–"
    if line["best"]:
        return "best"
    p = line.get("p_holm", line.get("p_value"))
    return "–" if _missing(p) else _p(p)


def delta(line) -> str:
    """``+22.42 [+19.80, +25.10]``: the difference to the baseline row and its 95 % interval."""
    if line is None:
        return "–"
    if line.get("baseline") == line["row"]:
        return "baseline"
    if _missing(line.get("delta")):
        return "–"
    return f"{line['delta']:+.2f} [{line['delta_low']:+.2f}, {line['delta_high']:+.2f}]"


def p_baseline(line) -> str:
    """The two-sided p-value of no difference to the baseline row, Holm-corrected."""
    p = None if line is None else line.get("p_baseline_holm")
    return "–" if _missing(p) else _p(p)


def _hyperparameters(table: pd.DataFrame, row: str) -> str:
    """A row's chosen hyperparameters: once where every language chose the same, else per language."""
    here = table[(table["row"] == row) & (table["column"] != AVERAGE)]
    chosen = {c: h for c, h in zip(here["column"], here.get("hyperparameters", pd.Series(dtype=object))) if h == h}
    if len(set(chosen.values())) == 1:
        return next(iter(chosen.values())) or "–"
    return "; ".join(f"{c}: {h or '–'}" for c, h in chosen.items()) or "–"


def wide(table: pd.DataFrame, columns: list[Column], bold: tuple[str, str]) -> pd.DataFrame:
    """Rows × (column, its p-value, with a baseline its Δ and p against it) + the average (likewise) +
    hyperparameters, as display strings; the best per column in ``bold``; ‡ on a column not in the paper's setting
    (the average: where a language is not, or its languages' settings differ)."""
    rows = list(dict.fromkeys(table["row"]))
    multiple = len(rows) > 1
    names = [c.name for c in columns] + ([AVERAGE] if AVERAGE in set(table["column"]) else [])
    deviating = {c.name for c in columns if c.deviations} | ({AVERAGE} if average_deviations(columns) else set())
    out = {}
    for name in names:
        header = name + (f" {NOT_PAPER}" if name in deviating else "")
        lines = {r["row"]: r for _, r in table[table["column"] == name].iterrows()}
        out[header] = [
            bold[0] + score(lines[r]) + bold[1] if r in lines and lines[r]["best"] else score(lines.get(r))
            for r in rows
        ]
        if multiple:
            out[f"{name} p"] = [p_value(lines.get(r)) for r in rows]
            bases = {b for b in (lines[r].get("baseline") for r in lines) if isinstance(b, str)}
            base = bases.pop() if len(bases) == 1 else "baseline" if bases else None  # several: each cell's own
            if base is not None:
                out[f"{name} Δ vs {base} [95% CI]"] = [delta(lines.get(r)) for r in rows]
                out[f"{name} p vs {base}"] = [p_baseline(lines.get(r)) for r in rows]
    if "hyperparameters" in table:
        out["hyperparameters"] = [_hyperparameters(table, r) for r in rows]
    return pd.DataFrame({"row": rows, **out})


def markdown(table: pd.DataFrame, columns: list[Column]) -> str:
    return wide(table, columns, ("**", "**")).to_markdown(index=False)


LATEX_SYMBOLS = {"±": r"$\pm$", NOT_PAPER: r"$^\ddagger$", "Δ": r"$\Delta$", "–": "--"}
LATEX_SPECIAL = str.maketrans({**{c: "\\" + c for c in "_%&#${}"}, "<": "$<$", ">": "$>$"})


def latex(table: pd.DataFrame, columns: list[Column], caption: str) -> str:
    """The table as a LaTeX ``table`` with booktabs rules (``\\usepackage{booktabs}``), the best per column in
    bold, the same numbers as :func:`markdown`; ``caption``: plain text, escaped here."""
    marked = wide(table, columns, ("\x00", ""))
    bold = marked.map(lambda v: isinstance(v, str) and v.startswith("\x00"))
    frame = marked.map(lambda v: v.removeprefix("\x00") if isinstance(v, str) else v)
    styler = (
        frame.style.hide(axis="index")
        .format(escape="latex")
        .format_index(escape="latex", axis=1)
        .apply(lambda _: bold.replace({True: "font-weight: bold", False: ""}), axis=None)
    )
    text = styler.to_latex(
        hrules=True,
        column_format="l" + "r" * (len(frame.columns) - 1),
        caption=caption.translate(LATEX_SPECIAL),
        label="tab:report",
        position_float="centering",
        convert_css=True,
    )
    for symbol, command in LATEX_SYMBOLS.items():
        text = text.replace(symbol, command)
    return text


def image_tag(path: Path, caption: str = "") -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{html.escape(caption or path.name)}</figcaption></figure>"
    )


def note_html(note: str) -> str:
    """A note as HTML: its first line a paragraph, its ``- `` lines a list."""
    first, *items = note.split("\n- ")
    return f"<p>{html.escape(first)}</p>" + (
        "<ul>" + "".join(f"<li>{html.escape(i)}</li>" for i in items) + "</ul>" if items else ""
    )


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th:first-child, td:first-child {{ text-align: left; }}
tr th {{ text-align: center; }}
thead th {{ background: #f3f3f3; }}
figure {{ display: inline-table; margin: 1em 1em 1em 0; vertical-align: top; }}
figcaption {{ display: table-caption; caption-side: bottom; color: #444; font-size: 0.92em; padding-top: 0.3em; }}
img {{ max-width: 100%; border: 1px solid #eee; }}
.note {{ color: #555; font-size: 0.92em; }}
.note ul {{ margin: 0.2em 0 0.8em 0; }}
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
    captions: dict[Path, str] | None = None,
) -> str:
    """The report as one HTML page; ``paper``: the paper's matching cells (rows × columns), as a second table;
    ``captions``: what each figure shows."""
    frame = wide(table, columns, ("\x00b", "\x00/b"))  # placeholders survive escaping, then become <b>
    body = frame.to_html(escape=True, border=0, index=False)
    body = body.replace("\x00b", "<b>").replace("\x00/b", "</b>")
    body = body.split(">", 1)[1].rsplit("</table>", 1)[0]  # keep our own <table id=report>
    return PAGE.format(
        title=html.escape(title),
        intro="\n".join(f"<p>{html.escape(p)}</p>" for p in intro),
        table=body,
        notes="".join(note_html(n) for n in notes),
        figures="\n".join(image_tag(f, (captions or {}).get(f, "")) for f in figures),
        paper=""
        if paper is None
        else '<h2>The paper\'s numbers</h2>\n<table id="paper">'
        + paper.to_html(escape=True, border=0, index=False).split(">", 1)[1].rsplit("</table>", 1)[0]
        + "</table>\n",
    )

"""The input and output tables of ``predict``: jsonl, csv or tsv, by the file's extension."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

FORMATS = {".jsonl": "jsonl", ".csv": "csv", ".tsv": "tsv"}
PREDICTION_COLUMN = "prediction"


class PredictError(ValueError):
    """Bad input to ``predict`` (file, column, model): one line, raised before any model is loaded."""


def table_format(path: Path) -> str:
    """``jsonl``, ``csv`` or ``tsv`` from the file's extension; :class:`PredictError` for any other."""
    kind = FORMATS.get(Path(path).suffix.lower())
    if kind is None:
        raise PredictError(
            f"{path}: unknown file type {Path(path).suffix or '(none)'!r}; expected one of {list(FORMATS)}"
        )
    return kind


def read_rows(path: Path) -> pd.DataFrame:
    """The input rows, every value as written (csv/tsv: strings; an empty cell is an empty string)."""
    path = Path(path)
    kind = table_format(path)
    if not path.is_file():
        raise PredictError(f"{path}: file not found")
    try:
        if kind == "jsonl":
            rows = pd.read_json(path, lines=True, dtype=False, convert_dates=False)
        else:
            rows = pd.read_csv(path, sep="\t" if kind == "tsv" else ",", dtype=str, keep_default_na=False)
    except (ValueError, UnicodeDecodeError, pd.errors.ParserError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PredictError(f"{path}: not readable as {kind}: {first}") from None
    if rows.empty:
        raise PredictError(f"{path}: no rows")
    return rows


def write_rows(rows: pd.DataFrame, path: Path) -> None:
    """``rows`` in the format of ``path``'s extension."""
    path = Path(path)
    kind = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        rows.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        rows.to_csv(path, sep="\t" if kind == "tsv" else ",", index=False)

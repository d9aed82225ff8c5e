"""The paper's own numbers beside a report's: the published cells that a report's rows and columns match.

The published results (``flare_ray/data/paper/results.csv``: Tables 1-4 and the per-language Tables 6-8 of
Borchert et al., one line per cell: table, model, task, language or ``average``, setting, method, variant,
metric, mean, std) are matched cell by cell. A report cell (a row, a language) matches a published cell
when all of these agree:

* the model: the sweep's ``model.name_or_path`` is the paper's model (its hub id, or a folder of that name);
* the task, and the language (the average column: only where the sweep runs every language of the paper's
  per-language table, since the paper averages over all of them);
* the setting: ``mt`` where every split is made as in the paper (NLLB translations, Table 1), ``gold``
  where training and validation are, and the test's source side is a gold English translation (Table 4);
  a column that is neither (offline recipes, ``max_records``, a tiny model) matches nothing;
* the method (``method.kind``), and the published variant (Table 2's fusion function, Table 3's rank) is
  a key of the row with that value; a cell without a variant matches a row that varies nothing but the method.

Each match gives the paper's mean and std and the difference (yours - paper's); where one report cell
matches several tables (an average in Table 1 and in Table 8), the lowest table number is kept.
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import pandas as pd

from flare_ray.tasks.base import ROLES

RESULTS = Path(__file__).resolve().parent.parent / "data" / "paper" / "results.csv"
CITATION = "Borchert et al., Language Fusion for Parameter-Efficient Cross-lingual Transfer"
PER_LANGUAGE_TABLE = {"xnli": 6, "tydiqa": 7, "nusax": 8}
COLUMNS = ["paper_table", "paper_mean", "paper_std", "difference"]
AVERAGE = "average"  # the column of a row's mean over its languages, as in the paper's tables
# Other names of the paper's models (folder or hub names, lower case) -> the hub id in results.csv
ALIASES = {"meta-llama-3.1-8b": "meta-llama/Llama-3.1-8B", "xlm-roberta-large": "FacebookAI/xlm-roberta-large"}


@lru_cache(maxsize=1)
def published() -> pd.DataFrame:
    """The published cells, one line each (``variant`` empty where the cell has none)."""
    frame = pd.read_csv(
        RESULTS, dtype={"variant": str, "language": str}, keep_default_na=False, na_values={"std": [""], "mean": [""]}
    )
    frame["std"] = pd.to_numeric(frame["std"], errors="coerce")
    return frame


def paper_model(name_or_path: str) -> str | None:
    """The paper's model that ``name_or_path`` is (its hub id, or a local folder named like it), or None."""
    name = str(name_or_path).rstrip("/").rsplit("/", 1)[-1].lower()
    if name in ALIASES:
        return ALIASES[name]
    for model in published()["model"].unique():
        if str(name_or_path) == model or name == model.rsplit("/", 1)[-1].lower():
            return model
    return None


def setting(provenance: dict | None, max_records: dict | None = None) -> str | None:
    """``mt`` (Table 1's data), ``gold`` (Table 4's: a gold English source side at test) or None (neither, or
    only the first records of a split)."""
    if not provenance or any(limit is not None for limit in (max_records or {}).values()):
        return None
    roles = [provenance.get(role) or {} for role in ROLES]
    if all(r.get("as_in_paper") is True for r in roles):
        return "mt"
    train, validation, test = roles
    if train.get("as_in_paper") is True and validation.get("as_in_paper") is True and test.get("gold_source") is True:
        return "gold"
    return None


def _matches(cell: pd.Series, row_key: dict) -> bool:
    if cell["method"] != row_key.get("method.kind"):
        return False
    if not cell["variant"]:
        return set(row_key) <= {"method.kind"}
    key, _, value = cell["variant"].partition("=")
    return key in row_key and str(row_key[key]) == value and set(row_key) <= {"method.kind", key}


def paper_cells(table: pd.DataFrame, columns, row_keys: dict[str, dict]) -> pd.DataFrame:
    """``table`` (the report's lines) with the published cell each matches: :data:`COLUMNS` (NaN where none).
    ``row_keys``: each row's grid cell and method."""
    out = table.copy()
    for name in COLUMNS:
        out[name] = math.nan
    cells = published()
    by_column = {c.name: c for c in columns}
    for index, line in out.iterrows():
        key = row_keys.get(line["row"])
        sweeps = [by_column[line["column"]].sweep] if line["column"] in by_column else [c.sweep for c in columns]
        if key is None or isinstance(line.get("mean"), float) and math.isnan(line["mean"]):
            continue
        sweep = sweeps[0]
        if len({s.name for s in sweeps}) != 1:
            continue  # an average over several sweeps' columns: the paper has none
        model = paper_model(sweep.config["model"]["name_or_path"])
        if line["column"] == AVERAGE:
            expected = set(
                cells[
                    (cells["table"] == PER_LANGUAGE_TABLE[sweep.task])
                    & (cells["task"] == sweep.task)
                    & (cells["language"] != "en")
                    & (cells["language"] != "average")
                ]["language"]
            )
            if set(sweep.languages) != expected:
                continue
            language = "average"
            limits = sweep.config["task"].get("max_records")
            settings = {setting(sweep.provenance.get(lang), limits) for lang in sweep.languages}
            where = settings.pop() if len(settings) == 1 else None
        else:
            language = line["language"]
            where = setting(sweep.provenance.get(language), sweep.config["task"].get("max_records"))
        if model is None or where is None:
            continue
        found = cells[
            (cells["model"] == model)
            & (cells["task"] == sweep.task)
            & (cells["language"] == language)
            & (cells["setting"] == where)
        ]
        found = found[[_matches(cell, key) for _, cell in found.iterrows()]].sort_values("table", kind="stable")
        if found.empty:
            continue
        cell = found.iloc[0]
        out.loc[index, COLUMNS] = [cell["table"], cell["mean"], cell["std"], line["mean"] - cell["mean"]]
    return out


def row_keys_of(trials: pd.DataFrame) -> dict[str, dict]:
    """Each report row's grid cell and method, from the trials the table was made of."""
    return {row: key for row, key in zip(trials["row"], trials["row_key"])}


def describe(line) -> str:
    """``79.18 ± 1.40 (T1), +1.23``; ``–`` where no published cell matches."""
    if line is None or not isinstance(line.get("paper_mean"), float) or math.isnan(line["paper_mean"]):
        return "–"
    text = f"{line['paper_mean']:.2f}"
    if not math.isnan(line["paper_std"]):
        text += f" ± {line['paper_std']:.2f}"
    difference = "" if math.isnan(line["difference"]) else f", {line['difference']:+.2f}"
    return f"{text} (T{int(line['paper_table'])}){difference}"


def note(table: pd.DataFrame) -> str:
    """What the paper table below the report says, or that no published cell matches."""
    matched = table["paper_mean"].notna().sum() if "paper_mean" in table else 0
    if not matched:
        return (
            f"No published cell of the paper ({CITATION}) matches these rows and columns: the paper's cells are "
            "XLM-R Large, mT5-XL, Llama 3.1 8B and Gemma 2 9B on the paper's data (NLLB translations, or gold "
            "English at test as in Table 4), with the paper's methods and variants."
        )
    return (
        f"The paper's numbers ({CITATION}; T = its table): {matched} cell(s) match a published one (same model, "
        "task, language, setting, method and variant); each shows the paper's mean ± std and the difference, "
        "yours - paper's."
    )


def paper_frame(table: pd.DataFrame, columns, rows: list[str]) -> pd.DataFrame | None:
    """Rows × columns of :func:`describe`, for the Markdown and HTML; None where nothing matches."""
    if "paper_mean" not in table or not table["paper_mean"].notna().any():
        return None
    names = [c.name for c in columns] + ([AVERAGE] if AVERAGE in set(table["column"]) else [])
    out = {}
    for name in names:
        lines = {r["row"]: r for _, r in table[table["column"] == name].iterrows()}
        out[name] = [describe(lines.get(r)) for r in rows]
    return pd.DataFrame({"row": rows, **out})

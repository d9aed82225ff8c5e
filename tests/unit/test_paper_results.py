"""flare_ray/data/paper/results.csv against the FLARE paper's own table text.

tests/data/flare-paper-tables.txt is a verbatim copy of the table lines of the paper's text dump (Tables 1-4 and
6-8). This module parses it on its own (a regex per cell form, with back-references so that a cell only counts
when all its printed copies agree) and checks that the CSV holds exactly the text's numbers: every CSV row equals
its cell, and every numeric cell of the text is in the CSV once (Table 1's Avg. column, which mixes tasks, is the
one deliberate exception).
"""

import csv
import re
from collections import Counter

import pytest

from tests.helpers import REPO, TESTS

CSV_PATH = REPO / "flare_ray" / "data" / "paper" / "results.csv"
TEXT_PATH = TESTS / "data" / "flare-paper-tables.txt"

COLUMNS = ["table", "model", "task", "language", "setting", "method", "variant", "metric", "mean", "std"]
KEY = COLUMNS[:7]

MODELS = {
    "XLM-R Large": "FacebookAI/xlm-roberta-large",
    "mT5-XL": "google/mt5-xl",
    "Llama 3.1 8B": "meta-llama/Llama-3.1-8B",
    "Gemma 2 9B": "google/gemma-2-9b",
}
TRAIN_METHODS = {
    "w/ LoRA": "lora",
    "w/ X-Mixup": "xmixup",
    "w/ input-level fusion": "input_fusion",
    "w/ FLARE MT": "flare_mt",
    "w/ FLARE": "flare",
    "FLARE": "flare",
}  # Table 6, gold block: mT5-XL's second row is printed without "w/"
METRICS = {"xnli": "accuracy", "tydiqa": "exact_match", "nusax": "macro_f1"}
LANGUAGES = {
    "xnli": {"en", "ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"},
    "tydiqa": {"en", "ar", "bn", "fi", "id", "ko", "ru", "sw", "te"},
    "nusax": {"en", "ace", "ban", "bjn", "bug", "ind", "jav", "mad", "min", "nij", "sun"},
}
TYDIQA_CODES = {"ben": "bn", "ind": "id", "tel": "te"}  # the paper's column names -> the project's codes
FUSIONS = {"add": "add", "mul": "mul", "add+relu": "add_relu", "cross-attention": "cross_attention"}

# Header line -> (table, task of the per-language columns or None, task per column for Tables 1-4; None = skipped)
HEADERS = {
    "Model XNLI TyDiQA NusaX Avg.": (1, None, ["xnli", "tydiqa", "nusax", None]),
    "Fusion Function TyDiQA NusaX": (2, None, ["tydiqa", "nusax"]),
    "Model r\U0001d45fritalic_r TyDiQA NusaX": (3, None, ["tydiqa", "nusax"]),
    "Model XNLI NusaX": (4, None, ["xnli", "nusax"]),
    "Model en ar bg de el es fr hi ru sw th tr ur vi zh Avg.": (6, "xnli", None),
    "Model en ar ben fi ind ko ru sw tel Avg.": (7, "tydiqa", None),
    "Model en ace ban bjn bug ind jav mad min nij sun Avg.": (8, "nusax", None),
}

_N = r"\d+\.\d+"
CELL = re.compile(
    r"(?<!\S)(?:"
    # 76.95±0.3plus-or-minus76.950.376.95\pm 0.376.95 ± 0.3 (optionally \phantom{0} before the LaTeX copy)
    rf"(?P<m1>{_N})±(?P<s1>{_N})plus-or-minus(?P=m1)(?P=s1)(?:\\phantom\{{0\}})?(?P=m1)\\pm (?P=s1)(?P=m1) ± (?P=s1)"
    # 67.0367.03\mathbf{67.03}bold_67.03
    rf"|(?P<m2>{_N})(?P=m2)\\mathbf\{{(?P=m2)\}}bold_(?P=m2)"
    # 87.8187.8187.8187.81 and 2.412.41\phantom{0}2.412.41
    rf"|(?P<m3>{_N})(?P=m3)(?:\\phantom\{{0\}})?(?P=m3)(?P=m3)"
    r")(?!\S)"
)
# The dump ends in the middle of a row: its last cell shows only two of its four copies (59.3559.35).
CUT_CELL = re.compile(rf"(?<!\S)(?P<m>{_N})(?P=m)$")


def split_row(line: str) -> tuple[str, list[tuple[str, str]], bool]:
    """(label, [(mean, std)], whether the row ends in a cut cell)."""
    matches = list(CELL.finditer(line))
    if not matches:
        return line.strip(), [], False
    label = line[: matches[0].start()].strip()
    cells = []
    pos = matches[0].start()
    for m in matches:
        assert not line[pos : m.start()].strip(), f"unreadable text {line[pos : m.start()]!r} in {line[:40]!r}"
        mean = m.group("m1") or m.group("m2") or m.group("m3")
        cells.append((mean, m.group("s1") or ""))
        pos = m.end()
    tail = line[pos:].strip()
    cut = False
    if tail:
        cut_match = CUT_CELL.fullmatch(tail)
        assert cut_match, f"unreadable tail {tail!r} in {line[:40]!r}"
        cells.append((cut_match.group("m"), ""))
        cut = True
    return label, cells, cut


def model_and_rest(label: str, model: str | None) -> tuple[str | None, str]:
    for name in MODELS:
        if label == name or label.startswith(name + " "):
            return name, label[len(name) :].strip()
    return model, label


def parse_text() -> tuple[dict[tuple, tuple[str, str]], dict]:
    """The text's cells, keyed like the CSV's rows, and some facts about the parse."""
    lines = TEXT_PATH.read_text(encoding="utf-8").splitlines()
    cells: dict[tuple, tuple[str, str]] = {}
    facts = {"skipped": 0, "cut_rows": [], "captions": [], "tables": []}
    table = None
    for number, line in enumerate(lines):
        if line in HEADERS:
            table, lang_task, task_columns = HEADERS[line]
            facts["tables"].append(table)
            if lang_task:
                codes = line.split()[1:-1]
                if lang_task == "tydiqa":
                    codes = [TYDIQA_CODES.get(c, c) for c in codes]
                columns = [(lang_task, c) for c in codes] + [(lang_task, "average")]
            else:
                columns = [(t, "average") if t else None for t in task_columns]
            model, block, r = None, None, None
            continue
        assert table is not None, line
        caption = re.match(r"Table (\d+): ", line)
        if caption:
            assert int(caption.group(1)) == table
            facts["captions"].append(table)
            continue
        label, values, cut = split_row(line)
        if not values:
            if label.startswith(("Zero-Shot", "Translate-Test", "Translate-Train")):
                block = label
            else:
                assert label in MODELS, line  # Table 4 prints each model on a line of its own
                model = label
            continue
        if cut:
            assert number == len(lines) - 1, "only the file's last line may be cut"
            facts["cut_rows"].append((table, label, len(values)))
        assert len(values) == len(columns) or cut, (line[:40], len(values))
        setting = "gold" if "gold translations" in block else "mt"
        variant = ""
        if table == 2:
            model, method, variant = "XLM-R Large", "flare", f"method.flare.fusion={FUSIONS[label]}"
        elif table == 3:
            m = re.fullmatch(r"(?:XLM-R Large )?(w/ FLARE MT|w/ FLARE)(?: (\d+))?", label)
            assert m, label
            r = m.group(2) or r
            model, method, variant = "XLM-R Large", TRAIN_METHODS[m.group(1)], f"method.lora.r={r}"
        else:
            model, rest = model_and_rest(label, model)
            if block.startswith("Zero-Shot"):
                assert rest == ""
                method = "zero_shot"
            elif block.startswith("Translate-Test"):
                assert rest == ""
                method = "translate_test"
            else:
                method = TRAIN_METHODS[rest]
        for column, (mean, std) in zip(columns, values):
            if column is None:
                facts["skipped"] += 1
                continue
            task, language = column
            key = (str(table), MODELS[model], task, language, setting, method, variant)
            assert key not in cells, key
            cells[key] = (mean, std)
    return cells, facts


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with CSV_PATH.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


@pytest.fixture(scope="module")
def text():
    return parse_text()


def test_every_csv_row_equals_its_cell_and_every_cell_is_in_the_csv(rows, text):
    cells, facts = text
    keys = [tuple(row[c] for c in KEY) for row in rows]
    duplicates = [k for k, n in Counter(keys).items() if n > 1]
    assert not duplicates
    assert set(keys) - set(cells) == set(), "CSV rows with no cell in the text"
    assert set(cells) - set(keys) == set(), "cells of the text missing from the CSV"
    for key, row in zip(keys, rows):
        assert (row["mean"], row["std"]) == cells[key], key
    assert facts["skipped"] == 28  # Table 1's Avg. column: 28 rows


def test_text_structure(text):
    cells, facts = text
    assert facts["tables"] == [1, 2, 3, 4, 6, 7, 8]
    assert facts["captions"] == [1, 2, 3, 4, 6, 7]  # the dump ends inside Table 8, before its caption
    assert facts["cut_rows"] == [(8, "XLM-R Large", 10)]  # en..nij; sun and Avg. are cut off
    per_table = Counter(key[0] for key in cells)
    assert per_table == {"1": 84, "2": 8, "3": 12, "4": 8, "6": 512, "7": 280, "8": 58}


def test_columns_and_value_sets(rows):
    assert {r["table"] for r in rows} == {"1", "2", "3", "4", "6", "7", "8"}
    assert {r["model"] for r in rows} == set(MODELS.values())
    assert {r["task"] for r in rows} == set(METRICS)
    assert {r["setting"] for r in rows} == {"mt", "gold"}
    assert {r["method"] for r in rows} == {
        "zero_shot",
        "translate_test",
        "lora",
        "xmixup",
        "input_fusion",
        "flare_mt",
        "flare",
    }
    assert {r["variant"] for r in rows} == {
        "",
        *(f"method.flare.fusion={f}" for f in FUSIONS.values()),
        *(f"method.lora.r={r}" for r in (8, 64, 128)),
    }
    for r in rows:
        assert r["metric"] == METRICS[r["task"]]
        assert re.fullmatch(r"\d+\.\d\d", r["mean"]), r
        assert re.fullmatch(r"(\d+\.\d)?", r["std"]), r
        assert (r["std"] != "") == (r["table"] == "1"), r  # only Table 1 prints standard deviations
        if r["table"] in {"1", "2", "3", "4"}:
            assert r["language"] == "average"
        else:
            assert r["language"] in LANGUAGES[r["task"]] | {"average"}
        assert (r["variant"] != "") == (r["table"] in {"2", "3"}), r
    gold = [r for r in rows if r["setting"] == "gold"]
    assert Counter(r["table"] for r in gold) == {"4": 8, "6": 64}  # Table 8's gold block is cut off in the text
    assert {r["method"] for r in gold} == {"input_fusion", "flare"}
    assert {r["model"] for r in gold} == {"FacebookAI/xlm-roberta-large", "google/mt5-xl"}
    for task, languages in LANGUAGES.items():
        assert {r["language"] for r in rows if r["table"] in {"6", "7", "8"} and r["task"] == task} == languages | {
            "average"
        }


@pytest.mark.parametrize(
    "table,model,task,language,setting,method,variant,mean,std",
    [
        ("1", "FacebookAI/xlm-roberta-large", "nusax", "average", "mt", "flare", "", "79.18", "1.4"),
        ("1", "meta-llama/Llama-3.1-8B", "tydiqa", "average", "mt", "translate_test", "", "2.53", "0.4"),
        ("1", "google/gemma-2-9b", "tydiqa", "average", "mt", "flare", "", "52.14", "0.7"),
        (
            "2",
            "FacebookAI/xlm-roberta-large",
            "tydiqa",
            "average",
            "mt",
            "flare",
            "method.flare.fusion=add",
            "40.76",
            "",
        ),
        ("3", "FacebookAI/xlm-roberta-large", "nusax", "average", "mt", "flare", "method.lora.r=8", "79.52", ""),
        ("3", "FacebookAI/xlm-roberta-large", "tydiqa", "average", "mt", "flare_mt", "method.lora.r=128", "40.21", ""),
        ("4", "google/mt5-xl", "xnli", "average", "gold", "input_fusion", "", "89.67", ""),
        ("6", "google/mt5-xl", "xnli", "ur", "gold", "flare", "", "79.22", ""),  # the bare "FLARE" row
        ("6", "meta-llama/Llama-3.1-8B", "xnli", "sw", "mt", "translate_test", "", "73.30", ""),
        ("7", "meta-llama/Llama-3.1-8B", "tydiqa", "bn", "mt", "zero_shot", "", "0.00", ""),
        ("7", "meta-llama/Llama-3.1-8B", "tydiqa", "ko", "mt", "xmixup", "", "0.00", ""),
        ("8", "google/gemma-2-9b", "nusax", "bug", "mt", "zero_shot", "", "31.92", ""),
        ("8", "FacebookAI/xlm-roberta-large", "nusax", "nij", "mt", "translate_test", "", "59.35", ""),  # the cut cell
    ],
)
def test_known_cells(rows, table, model, task, language, setting, method, variant, mean, std):
    want = (table, model, task, language, setting, method, variant)
    found = [r for r in rows if tuple(r[c] for c in KEY) == want]
    assert len(found) == 1
    assert (found[0]["mean"], found[0]["std"]) == (mean, std)


def test_cut_row_has_no_invented_cells(rows):
    cut = [r for r in rows if r["table"] == "8" and r["method"] == "translate_test"]
    assert [r["language"] for r in cut] == ["en", "ace", "ban", "bjn", "bug", "ind", "jav", "mad", "min", "nij"]

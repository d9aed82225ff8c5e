"""XNLI (Conneau et al., 2018): 3-way natural language inference. Metric: accuracy.

Offline copy (akhtet/myXNLI): dev/test for Swahili, Urdu and Myanmar, row-aligned
with the English dev/test (the English columns live in the ``my`` files), and
``<lang>.trans.test.tsv``: the gold test set with a machine translation into
English, the paper's realistic source side at test time.

MultiNLI (the paper's English training set) is not available offline, so the
offline recipes train on the first 2001 dev rows (667 premises) and select models on the rest
(``dev_head`` / ``dev_tail``): human translations stand in for NLLB ones. The
recipe used is recorded with every run.
"""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING, Any

from .base import Role, SplitRecipe, Task, TaskDataError
from .metrics import classification_scores

if TYPE_CHECKING:
    import datasets  # imported where records are made: a config is checked without it

LANGUAGES = {"sw": "sw", "ur": "ur", "my": "my"}  # the offline copy (akhtet/myXNLI)
#: A hub copy's: XNLI's fourteen target languages (the paper's, Table 6; facebook/xnli's configs besides en) and
#: myXNLI's my (akhtet/myXNLI)
HUB_LANGUAGES = {
    code: code for code in ("ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
}
HUB_LANGUAGES.update(LANGUAGES)
# The dev set holds three hypotheses per premise, in consecutive rows: split at a group boundary
# (2001 = 667 premises), or one premise would sit in both train and validation (rows 1998-2000).
DEV_TRAIN_ROWS = 2001


class XNLI(Task):
    name = "xnli"
    text_fields = ("premise", "hypothesis")
    labels = ("entailment", "neutral", "contradiction")
    primary_metric = "accuracy"
    languages = LANGUAGES
    hub_languages = HUB_LANGUAGES
    recipes = {
        "train": {
            "dev_head": SplitRecipe(
                f"first {DEV_TRAIN_ROWS} rows of the human-translated XNLI dev set (MultiNLI is not offline)",
                "the same rows of the English dev set",
                paper=False,
            ),
            "mt": SplitRecipe("NLLB translation of the English training set", "English training set", paper=True),
        },
        "validation": {
            "dev_tail": SplitRecipe(
                f"XNLI dev rows after the first {DEV_TRAIN_ROWS} (human translation)",
                "the same rows of the English dev set",
                paper=False,
            ),
            "mt": SplitRecipe("NLLB translation of the English dev set", "English dev set", paper=True),
        },
        "test": {
            "trans_test": SplitRecipe(
                "gold XNLI test set", "its machine translation into English (commercial MT, shipped)", paper=False
            ),
            "mt": SplitRecipe("gold XNLI test set", "its NLLB translation into English", paper=True),
        },
    }
    defaults = {"train": "dev_head", "validation": "dev_tail", "test": "trans_test"}
    hub_recipes = {
        "train": SplitRecipe(
            "MultiNLI machine-translated by the XNLI authors (not NLLB)", "English MultiNLI", paper=False
        ),
        "validation": SplitRecipe("human-translated XNLI dev set", "English dev set", paper=False),
        "test": SplitRecipe("gold XNLI test set", "gold English test set", paper=False, gold_source=True),
    }

    def split_rows(self, role: Role, recipe: str) -> str:
        """Train and validation: the head and the tail of the dev set, test: the test set; a hub copy
        (and ``mt`` made from it): its own train, validation and test splits."""
        if self.config.hub_id:
            return f"{self.config.hub_id} {role} split"
        if role == "test":
            return "XNLI test set"
        return f"XNLI dev rows 0-{DEV_TRAIN_ROWS - 1}" if role == "train" else f"XNLI dev rows from {DEV_TRAIN_ROWS}"

    def _read(self, name: str, columns: list[str]) -> list[dict[str, str]]:
        path = self.data_dir / name
        if not path.is_file():
            raise TaskDataError(f"{path}: file not found")
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise TaskDataError(f"{path}: missing columns {missing}; expected {columns}")
            rows = list(reader)
        for i, row in enumerate(rows, start=2):
            if row["label"] not in self.labels:
                raise TaskDataError(f"{path}: line {i}: label {row['label']!r} is not one of {list(self.labels)}")
        return rows

    def _local_records(self, role: Role, recipe: str) -> list[dict[str, Any]]:
        lang = self.language
        fields = ["sentence1", "sentence2"]
        if role == "test":
            rows = self._read(
                f"{lang}/{lang}.trans.test.tsv", ["label"] + [f"{s}_{x}" for x in (lang, "en") for s in fields]
            )
            english, ids = rows, range(len(rows))
        else:
            rows = self._read(f"{lang}/{lang}.genre.dev.tsv", ["label"] + [f"{s}_{lang}" for s in fields])
            english = self._read("my/my.genre.dev.tsv", ["label"] + [f"{s}_en" for s in fields])
            if len(english) != len(rows):
                raise TaskDataError(
                    f"{self.data_dir / lang}: {len(rows)} dev rows, but the English side has {len(english)}"
                )
            ids = range(DEV_TRAIN_ROWS) if role == "train" else range(DEV_TRAIN_ROWS, len(rows))
        records = []
        for i in ids:
            row, source = rows[i], english[i]
            if row["label"] != source["label"]:
                raise TaskDataError(
                    f"XNLI {lang} {role}: row {i} is {row['label']!r} but {source['label']!r} in English"
                )
            records.append(
                {
                    "id": f"{role}-{i}",
                    "label": row["label"],
                    "target_premise": row[f"sentence1_{lang}"],
                    "target_hypothesis": row[f"sentence2_{lang}"],
                    "source_premise": source["sentence1_en"],
                    "source_hypothesis": source["sentence2_en"],
                }
            )
        return records

    def _load_hub(self, role: Role, recipe: str) -> datasets.Dataset:
        """``facebook/xnli``-style: one config per language, row-aligned with ``en``; columns
        premise, hypothesis, label (class index). The hub's train split is MultiNLI with a machine
        translation, which the offline recipes name as they are used."""
        import datasets

        split = {"train": "train", "validation": "validation", "test": "test"}[role]
        target, english = (
            datasets.load_dataset(self.config.hub_id, code, split=split) for code in (self.language, "en")
        )
        for data, code in ((target, self.language), (english, "en")):
            missing = {"premise", "hypothesis", "label"} - set(data.column_names)
            if missing:
                raise TaskDataError(f"{self.config.hub_id} ({code}, {split}): missing columns {sorted(missing)}")
        if len(target) != len(english):
            raise TaskDataError(
                f"{self.config.hub_id} ({split}): {len(target)} {self.language} rows but {len(english)} English rows"
            )
        names = target.features["label"].names
        return datasets.Dataset.from_list(
            [
                {
                    "id": f"{role}-{i}",
                    "label": names[t["label"]],
                    "target_premise": t["premise"],
                    "target_hypothesis": t["hypothesis"],
                    "source_premise": e["premise"],
                    "source_hypothesis": e["hypothesis"],
                }
                for i, (t, e) in enumerate(zip(target, english))
            ]
        )

    def prompt(self, record: dict[str, Any], side: str) -> str:
        return (
            f"Premise: {record[f'{side}_premise']}\nHypothesis: {record[f'{side}_hypothesis']}\n"
            "Relation (entailment, neutral or contradiction)?\nAnswer:"
        )

    def score(self, predictions, records) -> dict[str, float]:
        return classification_scores(predictions, records["label"], self.labels)

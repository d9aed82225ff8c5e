"""NusaX sentiment (Winata et al., 2023): 3-way sentiment in 10 Indonesian local
languages, Indonesian and English. Every language folder holds the same
sentences (same ``id``, same label), so English is a gold source side for every
target sentence. Metric: macro-F1 (the paper's), and accuracy.
"""

from __future__ import annotations

import csv
from typing import TYPE_CHECKING, Any

from .base import Role, SplitRecipe, Task, TaskDataError
from .metrics import classification_scores

if TYPE_CHECKING:
    import datasets  # imported where records are made: a config is checked without it

LANGUAGES = {
    "ace": "acehnese",
    "ban": "balinese",
    "bbc": "toba_batak",
    "bjn": "banjarese",
    "bug": "buginese",
    "eng": "english",
    "ind": "indonesian",
    "jav": "javanese",
    "mad": "madurese",
    "min": "minangkabau",
    "nij": "ngaju",
    "sun": "sundanese",
}
_FILES = {"train": "train", "validation": "valid", "test": "test"}


class NusaX(Task):
    name = "nusax"
    text_fields = ("text",)
    labels = ("positive", "neutral", "negative")
    primary_metric = "macro_f1"
    languages = LANGUAGES
    recipes = {
        "train": {
            "gold": SplitRecipe("human translation of the English train set", "English train", paper=False),
            "mt": SplitRecipe("NLLB translation of the English train set", "English train", paper=True),
        },
        "validation": {
            "gold": SplitRecipe("human translation of the English validation set", "English validation", paper=False),
            "mt": SplitRecipe("NLLB translation of the English validation set", "English validation", paper=True),
        },
        "test": {
            "gold": SplitRecipe("gold test set", "its human English translation", paper=False, gold_source=True),
            "mt": SplitRecipe("gold test set", "its NLLB translation into English", paper=True),
        },
    }
    defaults = {"train": "gold", "validation": "gold", "test": "gold"}

    def split_rows(self, role: Role, recipe: str) -> str:
        """Each role has its own file (train, valid, test.csv; the hub's splits alike), in every recipe."""
        return f"{self.config.hub_id} {role} split" if self.config.hub_id else f"NusaX {_FILES[role]}.csv"

    def _read(self, language: str, role: Role) -> list[dict[str, str]]:
        path = self.data_dir / "sentiment" / LANGUAGES[language] / f"{_FILES[role]}.csv"
        if not path.is_file():
            raise TaskDataError(f"{path}: file not found (NusaX {role} split for {language})")
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            missing = {"id", "text", "label"} - set(reader.fieldnames or [])
            if missing:
                raise TaskDataError(f"{path}: missing columns {sorted(missing)}; expected id, text, label")
            rows = list(reader)
        for i, row in enumerate(rows, start=2):  # line numbers as an editor shows them
            if row["label"] not in self.labels:
                raise TaskDataError(f"{path}: line {i}: label {row['label']!r} is not one of {list(self.labels)}")
        return rows

    def _local_records(self, role: Role, recipe: str) -> list[dict[str, Any]]:
        target = self._read(self.language, role)
        english = {row["id"]: row for row in self._read("eng", role)}
        records = []
        for row in target:
            source = english.get(row["id"])
            if source is None:
                raise TaskDataError(f"NusaX {role}: id {row['id']} of {self.language} has no English counterpart")
            if source["label"] != row["label"]:
                raise TaskDataError(
                    f"NusaX {role}: id {row['id']} is {row['label']!r} in {self.language} but {source['label']!r} in English"
                )
            records.append(
                {"id": row["id"], "label": row["label"], "target_text": row["text"], "source_text": source["text"]}
            )
        return records

    def _load_hub(self, role: Role, recipe: str) -> datasets.Dataset:
        """``indonlp/NusaX-senti``-style: one config per language code, columns id, text, label."""
        import datasets

        split = {"train": "train", "validation": "validation", "test": "test"}[role]
        target, english = (_hub_rows(self.config.hub_id, code, split) for code in (self.language, "eng"))
        by_id = {row["id"]: row for row in english}
        records = []
        for row in target:
            source = by_id.get(row["id"])
            if source is None or source["label"] != row["label"]:
                raise TaskDataError(
                    f"{self.config.hub_id} ({self.language}, {split}): id {row['id']} has no matching English row"
                )
            records.append(
                {"id": row["id"], "label": row["label"], "target_text": row["text"], "source_text": source["text"]}
            )
        return datasets.Dataset.from_list(records)

    def prompt(self, record: dict[str, Any], side: str) -> str:
        return f"Sentiment (positive, neutral or negative) of: {record[f'{side}_text']}\nAnswer:"

    def score(self, predictions, records) -> dict[str, float]:
        return classification_scores(predictions, records["label"], self.labels)


def _hub_rows(hub_id: str, config: str, split: str) -> list[dict[str, str]]:
    import datasets

    data = datasets.load_dataset(hub_id, config, split=split)
    missing = {"id", "text", "label"} - set(data.column_names)
    if missing:
        raise TaskDataError(
            f"{hub_id} ({config}, {split}): missing columns {sorted(missing)}; expected id, text, label"
        )
    names = getattr(data.features["label"], "names", None)
    return [{"id": str(r["id"]), "text": r["text"], "label": names[r["label"]] if names else r["label"]} for r in data]

"""TyDiQA-GoldP (Clark et al., 2020): extractive QA; questions written natively in
each language. Metrics: SQuAD exact match (the paper's) and F1 on normalised
answer strings.

Offline copy: the English train set and the dev sets of nine languages, which
serve as gold test sets. Nothing is parallel offline: the paper's translate-train
data and the English side of the test set come from NLLB (``mt`` recipes,
made by ``python -m flare_ray.translate``). Without them the offline recipes
use English on both sides for training and validation, and the target text
itself as the source side of the test set; the recipe is recorded with every run.

Validation is always the English dev set and test the target language's dev set,
so the target language ``en`` is refused: its validation and test would be the
same questions, whatever the recipes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from .base import Role, SplitRecipe, Task, TaskDataError
from .metrics import squad_scores

if TYPE_CHECKING:
    import datasets  # imported where records are made: a config is checked without it

LANGUAGES = {
    "ar": "arabic",
    "bn": "bengali",
    "en": "english",
    "fi": "finnish",
    "id": "indonesian",
    "ko": "korean",
    "ru": "russian",
    "sw": "swahili",
    "te": "telugu",
}


class TyDiQA(Task):
    name = "tydiqa"
    text_fields = ("question", "context")
    labels = None
    primary_metric = "exact_match"
    languages = LANGUAGES
    recipes = {
        "train": {
            "english": SplitRecipe("the English training set (no translate-train offline)", "the same", paper=False),
            "mt": SplitRecipe(
                "NLLB translation of the English training set (answers via markers)", "English train", paper=True
            ),
        },
        "validation": {
            "english": SplitRecipe("the English dev set (no MT validation offline)", "the same", paper=False),
            "mt": SplitRecipe(
                "NLLB translation of the English dev set (answers via markers)", "English dev", paper=True
            ),
        },
        "test": {
            "self": SplitRecipe(
                "gold dev set of the language", "the target text itself (no English side offline)", paper=False
            ),
            "mt": SplitRecipe(
                "gold dev set of the language",
                "its NLLB translation into English, the gold answer projected by markers (translate-test scores "
                "the examples whose markers survived)",
                paper=True,
            ),
        },
    }
    defaults = {"train": "english", "validation": "english", "test": "self"}

    def split_rows(self, role: Role, recipe: str) -> str:
        """Every recipe (and the hub) makes train of the English train set, validation of the English dev
        set and test of the target language's dev set (see :meth:`_local_records`, :meth:`_load_hub`)."""
        language = self.language if role == "test" else "en"
        split = "train" if role == "train" else "dev"
        return f"{LANGUAGES[language].capitalize()} {split} set ({LANGUAGES[language]}_tydiqa_{split}.json)"

    def split_rows_hint(self, first: Role, second: Role) -> str:
        if (first, second) != ("validation", "test"):
            return super().split_rows_hint(first, second)
        return (
            "no recipe of tydiqa keeps them apart for English (the English dev set is the validation split of "
            "every target language), so choose a target language other than 'en'"
        )

    def _read(self, language: str, split: str) -> list[dict[str, Any]]:
        name = LANGUAGES[language]
        path = self.data_dir / name / f"{name}_tydiqa_{split}.json"
        if not path.is_file():
            raise TaskDataError(f"{path}: file not found (TyDiQA-GoldP {split} for {language})")
        try:
            articles = json.loads(path.read_text(encoding="utf-8"))["data"]
        except (json.JSONDecodeError, KeyError) as err:
            raise TaskDataError(f"{path}: not SQuAD-format JSON with a 'data' list ({err})") from None
        records = []
        for a, article in enumerate(articles):
            for p, paragraph in enumerate(article.get("paragraphs", [])):
                context = paragraph.get("context")
                for q, qa in enumerate(paragraph.get("qas", [])):
                    where = f"{path}: data[{a}].paragraphs[{p}].qas[{q}]"
                    if context is None or "question" not in qa or "id" not in qa or not qa.get("answers"):
                        raise TaskDataError(f"{where}: expected id, question, a non-empty answers list and a context")
                    for answer in qa["answers"]:
                        start, text = answer.get("answer_start"), answer.get("text")
                        if not isinstance(start, int) or context[start : start + len(text or "")] != text:
                            raise TaskDataError(
                                f"{where}: answer {text!r} is not at answer_start {start} of the context"
                            )
                    answers = [{"text": x["text"], "answer_start": x["answer_start"]} for x in qa["answers"]]
                    records.append({"id": qa["id"], "question": qa["question"], "context": context, "answers": answers})
        return records

    def _local_records(self, role: Role, recipe: str) -> list[dict[str, Any]]:
        if role == "test":
            rows = self._read(self.language, "dev")
        else:
            rows = self._read("en", "train" if role == "train" else "dev")
        return self._parallel(rows)

    @staticmethod
    def _parallel(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Without a translation, one side serves as both target and source (see the recipes)."""
        return [
            {
                "id": r["id"],
                **{f"{side}_{k}": r[k] for side in ("target", "source") for k in ("question", "context", "answers")},
            }
            for r in rows
        ]

    def _load_hub(self, role: Role, recipe: str) -> datasets.Dataset:
        """``google-research-datasets/tydiqa`` ``secondary_task`` (GoldP): all languages in one
        split, told apart by the id prefix; answers as ``{text: [...], answer_start: [...]}``."""
        import datasets

        language = self.language if role == "test" else "en"
        split = "train" if role == "train" else "validation"
        data = datasets.load_dataset(self.config.hub_id, "secondary_task", split=split)
        prefix = LANGUAGES[language] + "-"
        rows = []
        for r in data:
            if not r["id"].startswith(prefix):
                continue
            answers = [
                {"text": t, "answer_start": a} for t, a in zip(r["answers"]["text"], r["answers"]["answer_start"])
            ]
            rows.append({"id": r["id"], "question": r["question"], "context": r["context"], "answers": answers})
        if not rows:
            raise TaskDataError(f"{self.config.hub_id} ({split}): no question with an id starting {prefix!r}")
        return datasets.Dataset.from_list(self._parallel(rows))

    def prompt(self, record: dict[str, Any], side: str) -> str:
        return f"Context: {record[f'{side}_context']}\nQuestion: {record[f'{side}_question']}\nAnswer:"

    def score(self, predictions, records) -> dict[str, float]:
        return squad_scores(predictions, [[a["text"] for a in answers] for answers in records["target_answers"]])

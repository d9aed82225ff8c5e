"""The task interface: parallel records, the paper's splits, and scoring.

A task turns its data into *parallel records*: a ``datasets.Dataset`` with one
row per example and the columns

* ``id``: a string, unique within the split;
* ``target_<field>`` and ``source_<field>`` for each of the task's text fields
  (``premise``/``hypothesis``, ``text``, ``question``/``context``): the
  target-language side and its English (source) side;
* ``label`` (classification: one of the task's label strings) or, for QA,
  ``target_answers`` and ``source_answers``: lists of ``{"text", "answer_start"}``
  within the context of that side (``source_answers`` is empty for a translated
  test record whose answer markers were lost in translation).

Each task says which rows of its data each role is made of (:meth:`Task.split_rows`);
a configuration in which two roles would be the same rows (validation = test) is
a :class:`TaskDataError` when the task is made, before any data or model is loaded.

The training loop knows nothing else about a task: it asks for a split by role
(:data:`ROLES`), encodes batches with :mod:`flare_ray.tasks.encoding`, and
scores decoded predictions with :meth:`Task.score`.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from flare_ray.configfile import FieldError

from .metrics import CLASSIFICATION_METRICS, QA_METRICS

if TYPE_CHECKING:
    import datasets  # imported where records are read: a task (and a config) is checked without it

Role = Literal["train", "validation", "test"]
ROLES: tuple[Role, ...] = ("train", "validation", "test")
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


class TaskDataError(ValueError):
    """Bad task data or configuration, raised before any model is loaded."""


@dataclass(frozen=True)
class SplitRecipe:
    """How one role's split is made: the target side and the source side."""

    target: str
    source: str
    paper: bool  # is this what the paper uses? (Table 1's setting: NLLB translations)
    gold_source: bool = False  # a test split whose source side is a gold English translation (Table 4's setting)

    def describe(self) -> str:
        return f"target: {self.target}; source: {self.source}"


def mt_split_path(mt_dir: str | Path, task: str, language: str, role: str) -> Path:
    """The parquet file of one translated split (written by ``python -m flare_ray.translate``)."""
    return Path(mt_dir) / task / language / f"{role}.parquet"


def provenance_path(split_path: Path) -> Path:
    """The provenance JSON beside a translated split."""
    return split_path.with_name(f"{split_path.stem}.provenance.json")


class TaskConfig(BaseModel):
    """Which task, which target language, and where each split comes from.

    The base of the experiment's ``task:`` section (several languages) and of the
    translation config's (no ``splits``). Local paths are made absolute here, once.
    """

    model_config = ConfigDict(extra="forbid")

    name: Literal["xnli", "nusax", "tydiqa"] = Field(description="the task: xnli, nusax or tydiqa")
    language: str = Field(description="target language code, e.g. 'sw', 'jav'")
    data_dir: Path | None = Field(None, description="local copy of the data; default: the vendored copy")
    hub_id: str | None = Field(None, description="a Hugging Face hub dataset id instead of local files")
    mt_dir: Path | None = Field(
        None, description="output folder of `python -m flare_ray.translate`, for splits made with 'mt'"
    )
    splits: dict[Role, str] = Field(
        default_factory=dict, description="role -> recipe name; unset roles use the task's offline default"
    )
    max_records: dict[Role, int] = Field(default_factory=dict, description="keep only the first N rows of a role")

    @field_validator("data_dir", "mt_dir")
    @classmethod
    def _absolute(cls, path: Path | None) -> Path | None:
        return path.expanduser().resolve() if path is not None else None

    @field_validator("max_records")
    @classmethod
    def _some_rows(cls, limits: dict[Role, int]) -> dict[Role, int]:
        for role, limit in limits.items():
            if limit < 1:
                raise FieldError(
                    role,
                    f"{limit} rows would leave the {role} split empty (scikit-learn refuses an empty one); "
                    f"expected at least 1, or no max_records.{role} for all of its rows",
                )
        return limits


class Task(ABC):
    """One task behind the common interface (see module docstring)."""

    name: ClassVar[str]
    text_fields: ClassVar[tuple[str, ...]]
    labels: ClassVar[tuple[str, ...] | None] = None  # None: extractive QA
    primary_metric: ClassVar[str]

    @classmethod
    def metrics(cls) -> tuple[str, ...]:
        """The names :meth:`score` reports."""
        return CLASSIFICATION_METRICS if cls.labels else QA_METRICS

    languages: ClassVar[dict[str, str]]  # language code -> name used by the data files
    hub_languages: ClassVar[dict[str, str] | None] = None  # a hub copy's (config.hub_id); None: the same
    recipes: ClassVar[dict[Role, dict[str, SplitRecipe]]]  # role -> recipe name -> recipe
    defaults: ClassVar[dict[Role, str]]  # the offline default recipe per role
    hub_recipes: ClassVar[dict[Role, SplitRecipe]] = {}  # what a hub copy gives, where it differs

    @classmethod
    def source_languages(cls, hub_id: str | None) -> dict[str, str]:
        """The target languages the task's data source has: the hub copy's where ``hub_id`` names one."""
        return cls.hub_languages if hub_id and cls.hub_languages is not None else cls.languages

    def __init__(self, config: TaskConfig) -> None:
        known = self.source_languages(config.hub_id)
        if config.language not in known:
            where = ""
            if self.hub_languages is not None:
                where = (
                    f" (the hub copy {config.hub_id}'s)"
                    if config.hub_id
                    else f" (the offline copy's; a hub copy, task.hub_id, has {sorted(self.hub_languages)})"
                )
            raise TaskDataError(
                f"task {self.name}: unknown language {config.language!r}; expected one of {sorted(known)}{where}"
            )
        for role, recipe in config.splits.items():
            if recipe not in self.recipes[role]:
                raise TaskDataError(
                    f"task {self.name}: splits.{role} = {recipe!r} is not a recipe of this task; "
                    f"expected one of {sorted(self.recipes[role])}"
                )
            if recipe == "mt" and config.mt_dir is None:
                raise TaskDataError(f"task {self.name}: splits.{role} = 'mt' needs mt_dir (the translation output)")
        self.config = config
        self.language = config.language
        self.data_dir = Path(config.data_dir) if config.data_dir else DATA_DIR / self.name
        self._check_roles_apart()

    # -- which rows each role is made of ---------------------------------------------
    #: Pairs of roles that must not be made of the same rows, and why.
    APART: ClassVar[tuple[tuple[Role, Role, str], ...]] = (
        (
            "validation",
            "test",
            "model selection and early stopping would see the test set, and the test score would not be held out",
        ),
        ("train", "test", "the model would be trained on the test set"),
        ("train", "validation", "model selection would score the training set"),
    )

    def split_rows(self, role: Role, recipe: str) -> str | None:
        """Which rows of the data ``role`` is made of with ``recipe``, as a description naming them
        (equal descriptions: the same rows); None where the task does not say.

        An ``mt`` split is the translation of the rows that ``python -m flare_ray.translate`` loads for
        that role (the default recipe), so it names the same rows as the default recipe.
        """
        return None

    def split_rows_hint(self, first: Role, second: Role) -> str:
        """What to do when ``first`` and ``second`` would be made of the same rows."""
        return "choose split recipes (splits) that keep them apart"

    def _check_roles_apart(self) -> None:
        """:class:`TaskDataError` if two roles would be made of the same rows (before any data is read)."""
        for first, second, why in self.APART:
            rows = self.split_rows(first, self.recipe(first))
            if rows is not None and rows == self.split_rows(second, self.recipe(second)):
                raise TaskDataError(
                    f"{self.name}: target language {self.language!r}: {first} and {second} would be the same {rows}, "
                    f"with recipes {first}={self.recipe(first)!r} and {second}={self.recipe(second)!r}: {why}; "
                    f"{self.split_rows_hint(first, second)}"
                )

    # -- splits ---------------------------------------------------------------
    def recipe(self, role: Role) -> str:
        return self.config.splits.get(role, self.defaults[role])

    def provenance(self) -> dict[str, Any]:
        """What every split is made of, and where it departs from the paper (recorded with each run)."""
        out: dict[str, Any] = {
            "task": self.name,
            "language": self.language,
            "data": self.config.hub_id or str(self.data_dir),
        }
        for role in ROLES:
            name = self.recipe(role)
            recipe = self.recipes[role][name]
            if self.config.hub_id and name != "mt":
                name, recipe = "hub", self.hub_recipes.get(role, recipe)
            out[role] = {
                "recipe": name,
                "made_of": recipe.describe(),
                "as_in_paper": recipe.paper,
                "gold_source": recipe.gold_source,
            }
        return out

    def load(self, role: Role) -> datasets.Dataset:
        """The parallel records of one role, validated."""
        recipe = self.recipe(role)
        if recipe == "mt":
            records = self._load_mt(role)
        elif self.config.hub_id:
            records = self._load_hub(role, recipe)
        else:
            records = self._load_local(role, recipe)
        limit = self.config.max_records.get(role)
        if limit is not None:
            records = records.select(range(min(limit, len(records))))
        self.validate(records, where=f"{self.name}/{self.language}/{role}")
        return records

    def check_data(self, translated_here: bool = False) -> None:
        """:class:`TaskDataError` where a split that is read from local files (``data_dir``; not a ``hub_id``)
        cannot be: a missing file, a column or a label it lacks, rows of the two sides that do not match. What
        :meth:`load` would refuse in a trial, found before Ray starts (rows are read, no dataset is made). An
        ``mt`` split is read as it is (made elsewhere), except where ``translated_here``: the sweep translates
        the rows of the role's default recipe first, which are checked instead."""
        if self.config.hub_id:
            return
        for role in ROLES:
            recipe = self.recipe(role)
            if recipe != "mt":
                self._local_records(role, recipe)
            elif translated_here:
                self._local_records(role, self.defaults[role])

    def _load_local(self, role: Role, recipe: str) -> datasets.Dataset:
        import datasets

        return datasets.Dataset.from_list(self._local_records(role, recipe))

    @abstractmethod
    def _local_records(self, role: Role, recipe: str) -> list[dict[str, Any]]:
        """The parallel records of a role read from the local files (``data_dir``), checked as they are read."""

    def _load_hub(self, role: Role, recipe: str) -> datasets.Dataset:
        raise TaskDataError(f"task {self.name}: loading from the hub is not supported; use data_dir")

    def _load_mt(self, role: Role) -> datasets.Dataset:
        path = mt_split_path(self.config.mt_dir, self.name, self.language, role)
        if not path.is_file():
            raise TaskDataError(
                f"{path}: no translated {role} split for {self.name}/{self.language}; "
                "run `python -m flare_ray.translate` first"
            )
        import datasets
        import pyarrow.parquet as pq

        records = datasets.Dataset(pq.read_table(path))  # from_parquet refuses a zero-row file
        if len(records) == 0:
            raise TaskDataError(
                f"{path}: the translated {role} split is empty (see its .provenance.json: dropped records)"
            )
        return records

    def mt_provenance(self, role: Role) -> dict[str, Any] | None:
        """The provenance that ``python -m flare_ray.translate`` wrote beside the role's translated split
        (``<role>.provenance.json``); None unless the role is made with ``mt`` and the file is there."""
        if self.recipe(role) != "mt":
            return None
        path = provenance_path(mt_split_path(self.config.mt_dir, self.name, self.language, role))
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise TaskDataError(f"{path}: not JSON ({err}); translate the {role} split again") from None

    def validate(self, records: datasets.Dataset, where: str) -> None:
        """Columns, labels and ids, with errors naming the split and the row."""
        expected = ["id"] + [f"{side}_{f}" for f in self.text_fields for side in ("target", "source")]
        expected += ["label"] if self.labels else ["target_answers", "source_answers"]
        missing = [c for c in expected if c not in records.column_names]
        if missing:
            raise TaskDataError(f"{where}: missing columns {missing}; expected {expected}")
        if self.labels:
            for row, label in enumerate(records["label"]):
                if label not in self.labels:
                    raise TaskDataError(f"{where}: row {row}: label {label!r} is not one of {list(self.labels)}")
        ids = records["id"]
        if len(set(ids)) != len(ids):
            raise TaskDataError(f"{where}: ids are not unique")

    # -- generative framing ---------------------------------------------------
    @abstractmethod
    def prompt(self, record: dict[str, Any], side: Literal["target", "source"]) -> str:
        """The input text of a record's side, for generative (encoder-decoder, decoder) models."""

    def answer(self, record: dict[str, Any]) -> str:
        """The string a generative model must produce for a record."""
        if self.labels:
            return record["label"]
        return record["target_answers"][0]["text"]

    def parse(self, generated: str) -> str | None:
        """A generated string as a prediction; ``None`` if it is no valid label (counted as wrong)."""
        text = generated.strip()
        if not self.labels:
            return text
        return text.lower() if text.lower() in self.labels else None

    # -- scoring ----------------------------------------------------------------
    @abstractmethod
    def score(self, predictions: list[str | None], records: datasets.Dataset) -> dict[str, float]:
        """Metrics of predictions (labels or answer strings; ``None``: invalid) against the records."""

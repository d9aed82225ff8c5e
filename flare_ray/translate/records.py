"""Which side of a role's records is translated, into which segments, and how the translations come back.

* ``train`` and ``validation``: the English source side is translated into the
  target language; the translations fill ``target_<field>`` (and, for QA,
  ``target_answers``).
* ``test``: the gold target side is translated into English; the translations
  fill ``source_<field>`` (and ``source_answers``).

Every text field of a record is one segment. For QA the context carries its
(first) answer between markers (:mod:`.markers`), so that the answer can be
found in the translation; the question is translated as it is. Train and
validation records whose markers are lost are dropped (and counted).

The test contexts carry markers too, as the authors' (pnborchert/FLARE,
``run_translate.py``: ``process_qa`` marks the test split as well): the span the
markers enclose after translation is the English gold answer
(``source_answers``), which translate-test is scored against, on the examples
whose markers survived (:func:`flare_ray.training.setup.translate_test_split`).
A test record whose markers are lost is kept, with the marker strings removed
from its translated context and empty ``source_answers``, and listed
(``Outcome.markers_lost``): the gold test set stays whole for every method that
reads the target side, and it is scored against the gold ``target_answers``,
kept as they are. (So the English test side depends on where the gold answer
is, as in the authors' setup.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import datasets

from flare_ray.languages import ENGLISH, NllbLanguage
from flare_ray.tasks.base import Role, Task, TaskDataError

from .markers import MarkerError, Markers, extract_markers, insert_markers
from .translator import Segment, Translation

Side = Literal["source", "target"]


@dataclass(frozen=True)
class Direction:
    """The side read and the side written, and their languages."""

    read: Side
    write: Side
    src: NllbLanguage
    tgt: NllbLanguage


def direction(role: Role, language: NllbLanguage) -> Direction:
    if role == "test":
        return Direction("target", "source", language, ENGLISH)
    return Direction("source", "target", ENGLISH, language)


@dataclass
class RolePlan:
    """The segments of one role's records, in record order and ``task.text_fields`` order."""

    role: Role
    direction: Direction
    records: datasets.Dataset
    fields: tuple[str, ...]
    qa: bool
    segments: list[list[Segment]]  # per record, per field
    scrubbed: int = 0  # QA contexts in which marker characters were replaced by stand-ins

    @property
    def marked(self) -> bool:
        """Do this role's QA contexts carry their answer between markers? (every role, as the authors')"""
        return self.qa

    @property
    def keeps_unmarked(self) -> bool:
        """Is a record whose markers were lost kept (with empty answers on the written side)? The test
        role's: the gold test set stays whole; translate-test leaves such records out when it scores."""
        return self.role == "test"


@dataclass
class Outcome:
    """What assembling a role's translations kept, dropped and noticed."""

    records: datasets.Dataset | None = None  # the output split
    dropped: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason"}: left out of the output
    markers_lost: list[dict[str, str]] = field(default_factory=list)  # {"id", "reason"}: test, kept without answers
    truncated: list[str] = field(default_factory=list)  # ids with an input cut at max_length


def plan_role(task: Task, role: Role, records: datasets.Dataset, language: NllbLanguage, markers: Markers) -> RolePlan:
    """The segments to translate for one role; :class:`TaskDataError` for a record that cannot be marked."""
    way = direction(role, language)
    qa = task.labels is None
    segments, scrubbed = [], 0
    for row, record in enumerate(records):
        texts = {f: record[f"{way.read}_{f}"] for f in task.text_fields}
        if qa:
            answers = record[f"{way.read}_answers"]
            where = f"{task.name}/{task.language}/{role}: row {row} (id {record['id']})"
            if not answers:
                raise TaskDataError(f"{where}: no answer in {way.read}_answers to carry through translation")
            try:
                marked = insert_markers(texts["context"], answers[0], markers)
            except MarkerError as err:
                raise TaskDataError(f"{where}: {err}") from None
            scrubbed += markers.scrub(texts["context"]) != texts["context"]
            texts["context"] = marked
        segments.append([Segment(way.src.code, way.tgt.code, texts[f]) for f in task.text_fields])
    return RolePlan(role, way, records, tuple(task.text_fields), qa, segments, scrubbed)


BACK = "back_translation"  # the columns of the back-translation (X-Mixup): back_translation_<field>


def back_segments(task: Task, records: datasets.Dataset, language: NllbLanguage) -> list[list[Segment]]:
    """The target side of the (translated) training records, to translate back into English: per record, per
    text field (a QA context as the model reads it, without markers)."""
    return [
        [Segment(language.code, ENGLISH.code, record[f"target_{f}"]) for f in task.text_fields] for record in records
    ]


def with_back_translation(
    task: Task, records: datasets.Dataset, segments: list[list[Segment]], translations: dict[Segment, Translation]
) -> datasets.Dataset:
    """``records`` with a ``back_translation_<field>`` column per text field."""
    for k, f in enumerate(task.text_fields):
        records = records.add_column(f"{BACK}_{f}", [translations[segs[k]].text for segs in segments])
    return records


def assemble(plan: RolePlan, translations: dict[Segment, Translation], markers: Markers) -> Outcome:
    """The role's records with the written side replaced by the translations.

    QA train/validation records whose markers did not survive are dropped (and
    listed); QA test records whose markers did not survive are kept with the
    translated context (marker strings removed) and empty ``source_answers``,
    and listed, so the gold test set stays complete.
    """
    write = plan.direction.write
    rows, outcome = [], Outcome()
    for record, segments in zip(plan.records, plan.segments):
        out: dict[str, Any] = dict(record)
        done = {f: translations[s] for f, s in zip(plan.fields, segments)}
        if any(t.truncated for t in done.values()):
            outcome.truncated.append(record["id"])
        for f, t in done.items():
            out[f"{write}_{f}"] = t.text
        if plan.marked:
            try:
                out[f"{write}_context"], answer = extract_markers(done["context"].text, markers)
                out[f"{write}_answers"] = [answer]
            except MarkerError as err:
                lost = {"id": record["id"], "reason": err.reason}
                if not plan.keeps_unmarked:
                    outcome.dropped.append(lost)
                    continue
                outcome.markers_lost.append(lost)
                out[f"{write}_context"] = unmarked(done["context"].text, markers)
                out[f"{write}_answers"] = []  # no projected answer: translate-test leaves the record out
        rows.append(out)
    columns = {c: [r[c] for r in rows] for c in plan.records.column_names}  # from_list cannot make an empty split
    outcome.records = datasets.Dataset.from_dict(columns, features=plan.records.features)
    return outcome


def unmarked(translation: str, markers: Markers) -> str:
    """A translation whose markers did not survive as a pair, with every marker string removed (the authors
    remove them from every context they read)."""
    return translation.replace(markers.open, "").replace(markers.close, "")

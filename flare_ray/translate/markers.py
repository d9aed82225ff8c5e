"""EasyProject-style answer projection through MT (Chen et al., 2023).

Before translation the answer span of a context is wrapped in a pair of markers
(default ``[`` and ``]``, which NLLB keeps); marker characters already in the
context, such as Wikipedia's ``[1]`` citations, are first replaced by stand-ins
(``(`` and ``)``) so that the only markers left are ours. After translation
exactly one opening marker followed by one closing marker must remain: they are
removed, and where they stood gives the translated answer and its
``answer_start``. Anything else (markers lost, repeated, reversed, or around
nothing) raises :class:`MarkerError`; the pipeline drops and counts the record
(a test record is kept without a projected answer, and counted).

Markers are used in every role, as the authors' (pnborchert/FLARE): in train and
validation the English answer must be found in the translation; in test the
target-language answer is projected into English, where translate-test is
scored against it (see :mod:`.records`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Markers:
    """The marker pair around the answer, and what replaces marker characters already in a context."""

    open: str = "["
    close: str = "]"
    stand_ins: tuple[str, str] = ("(", ")")

    def __post_init__(self) -> None:
        if not self.open or not self.close or self.open == self.close:
            raise ValueError(f"markers must be two different non-empty strings, got {self.open!r} and {self.close!r}")
        if any(m in s for m in (self.open, self.close) for s in self.stand_ins):
            raise ValueError(f"stand-ins {self.stand_ins} must not contain the markers {self.open!r}, {self.close!r}")

    def scrub(self, text: str) -> str:
        """``text`` with marker strings replaced by their stand-ins."""
        return text.replace(self.open, self.stand_ins[0]).replace(self.close, self.stand_ins[1])


class MarkerError(ValueError):
    """An answer that cannot be carried through translation; ``reason`` is a short code for the provenance."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def insert_markers(context: str, answer: dict[str, Any], markers: Markers = Markers()) -> str:
    """``context`` with ``answer`` (``{"text", "answer_start"}``) wrapped in the markers."""
    start, text = answer["answer_start"], answer["text"]
    if not text or context[start : start + len(text)] != text:
        raise MarkerError("answer_not_in_context", f"answer {text!r} is not at answer_start {start} of the context")
    end = start + len(text)
    return (
        markers.scrub(context[:start])
        + markers.open
        + markers.scrub(text)
        + markers.close
        + markers.scrub(context[end:])
    )


def extract_markers(translation: str, markers: Markers = Markers()) -> tuple[str, dict[str, Any]]:
    """The translated context without markers, and the answer they enclosed.

    The answer is ``{"text", "answer_start"}`` with ``context[answer_start:][:len(text)] == text``.
    Whitespace just inside a marker is dropped when the outside already has some,
    so ``"in [ Jakarta ] ."`` gives ``"in Jakarta ."``.
    """
    opens, closes = translation.count(markers.open), translation.count(markers.close)
    if opens == 0 and closes == 0:
        raise MarkerError("markers_lost", "the translation has no answer markers")
    if opens != 1 or closes != 1:
        raise MarkerError(
            "markers_malformed", f"expected one pair of markers, found {opens} opening and {closes} closing"
        )
    i, j = translation.index(markers.open), translation.index(markers.close)
    if j < i:
        raise MarkerError("markers_malformed", "the closing marker comes before the opening one")
    before, inner, after = (
        translation[:i],
        translation[i + len(markers.open) : j],
        translation[j + len(markers.close) :],
    )
    text = inner.strip()
    if not text:
        raise MarkerError("empty_answer", "nothing between the answer markers")
    lead = "" if not before or before[-1].isspace() else inner[: len(inner) - len(inner.lstrip())]
    trail = "" if not after or after[0].isspace() else inner[len(inner.rstrip()) :]
    context = before + lead + text + trail + after
    return context, {"text": text, "answer_start": len(before) + len(lead)}

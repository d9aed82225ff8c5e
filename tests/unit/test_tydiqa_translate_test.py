"""Translate-test on TyDiQA is scored as the authors score it (issue 26, item 5).

The authors (pnborchert/FLARE) translate the test contexts into English with the gold answer between markers,
score translate-test against the span the markers enclose after translation, and leave out the examples whose
markers were lost. A tiny random NLLB keeps no markers, so the English test side is made here by hand: an
``mt_dir`` in which some examples have answers projected into English and the others lost their markers.
Checked: the trial's test split is the examples that kept their markers, scored against their English answers
(exact match and F1), with the counts on the trial's final result; a test side translated without markers is
scored against the target-language answers and says so; the report's footnote states both.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import pandas as pd
import pytest
import torch

from flare_ray.experiment import load_experiment
from flare_ray.report.build import translate_test_notes
from flare_ray.report.records import SweepRecords
from flare_ray.report.table import cells
from flare_ray.tasks import TaskConfig, get_task
from flare_ray.tasks.base import TaskDataError, mt_split_path
from flare_ray.tasks.predictions import score_frame
from flare_ray.training import loop
from flare_ray.training.setup import build_trial, translate_test_split
from tests.helpers import QUICKSTART

TOTAL, LOST = 6, (1, 4)  # test examples, and those whose markers did not survive translation
KEPT = TOTAL - len(LOST)


def english_answer(i: int) -> str:
    return f"answer number {i}"


def write_mt_test(mt_dir: Path, *, projected: bool = True, lost=LOST) -> list[dict]:
    """The translated Swahili test split as the translation stage writes it: the gold Swahili side, an English
    side whose context holds ``english_answer(i)`` (its ``source_answers``, empty for the examples in ``lost``,
    or for all without ``projected``), and the provenance beside it."""
    gold = get_task(TaskConfig(name="tydiqa", language="sw", max_records={"test": TOTAL})).load("test")
    rows = []
    for i, record in enumerate(gold):
        context = f"The English context of question {i}: {english_answer(i)}, it says."
        start = context.index(english_answer(i))
        answers = [{"text": english_answer(i), "answer_start": start}] if projected and i not in lost else []
        rows.append(
            {
                **record,
                "source_question": f"What is question {i} about?",
                "source_context": context,
                "source_answers": answers,
            }
        )
    path = mt_split_path(mt_dir, "tydiqa", "sw", "test")
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows, features=gold.features).to_parquet(str(path))
    provenance = {
        "role": "test",
        "answers_projected": projected,
        "records_in": TOTAL,
        "records_out": TOTAL,
        "markers_lost": [{"id": rows[i]["id"], "reason": "markers_lost"} for i in lost] if projected else [],
    }
    path.with_name("test.provenance.json").write_text(json.dumps(provenance))
    return rows


def mt_task(mt_dir: Path):
    return get_task(
        TaskConfig(name="tydiqa", language="sw", mt_dir=mt_dir, splits={"test": "mt"}, max_records={"test": TOTAL})
    )


def test_translate_test_is_scored_against_the_english_answers_of_the_examples_that_kept_their_markers(tmp_path):
    rows = write_mt_test(tmp_path / "mt")
    test = translate_test_split(mt_task(tmp_path / "mt"), mt_task(tmp_path / "mt").load("test"))
    kept = [r for i, r in enumerate(rows) if i not in LOST]
    assert list(test.records["id"]) == [r["id"] for r in kept]  # the examples whose markers were lost are out
    assert test.records["target_answers"] == [r["source_answers"] for r in kept]  # the English gold answers
    assert test.records["target_context"] == [r["source_context"] for r in kept]  # read on the English side
    assert test.metrics() == {"examples": KEPT, "examples_total": TOTAL, "english_answers": 1.0}

    # exact match and F1 against the projected English answers, not the Swahili ones
    task = mt_task(tmp_path / "mt")
    right = [english_answer(i) for i in range(TOTAL) if i not in LOST]
    assert task.score(right, test.records) == {"exact_match": 100.0, "f1": 100.0}
    half = right[: KEPT // 2] + ["something else entirely"] * (KEPT - KEPT // 2)
    assert task.score(half, test.records)["exact_match"] == pytest.approx(100.0 * (KEPT // 2) / KEPT)
    swahili = [r["target_answers"][0]["text"] for r in kept]
    assert task.score(swahili, test.records)["exact_match"] == 0.0


def test_a_translate_test_trial_scores_and_records_the_filtered_test_set(tmp_path, monkeypatch):
    """Through the trial's setup and its scoring-only loop, on the tiny XLM-R with a span head."""
    rows = write_mt_test(tmp_path / "mt")
    config = load_experiment(
        QUICKSTART,
        [
            f"storage_path={tmp_path}",
            "task.name=tydiqa",
            "task.languages=[sw]",
            f"task.mt_dir={tmp_path / 'mt'}",
            "task.splits={test: mt}",
            f"task.max_records={{train: 4, validation: 4, test: {TOTAL}}}",
            "method.kind=translate_test",
            "search.space={}",
            "search.scheduler=null",
            "search.metric=validation/exact_match",
        ],
    )
    trial = build_trial(config, "sw")
    assert len(trial.splits["test"]) == KEPT and trial.test_metrics["examples_total"] == TOTAL
    reports = []
    monkeypatch.setattr(loop.session, "report", lambda metrics, checkpoint=None: reports.append((metrics, checkpoint)))
    monkeypatch.setattr(loop.session, "device", lambda: torch.device("cpu"))
    loop._score_only(trial, config, "sw", rank=0)
    final, checkpoint = reports[-1]
    assert final["test/examples"] == KEPT and final["test/examples_total"] == TOTAL
    assert final["test/english_answers"] == 1
    frame = pd.read_parquet(checkpoint / "predictions" / "test.parquet")
    kept = [r for i, r in enumerate(rows) if i not in LOST]
    assert list(frame["id"]) == [r["id"] for r in kept]
    assert [list(g) for g in frame["gold"]] == [[english_answer(i)] for i in range(TOTAL) if i not in LOST]
    assert score_frame(trial.task, frame) == {k: final[f"test/{k}"] for k in ("exact_match", "f1")}


def test_a_test_side_translated_without_markers_is_scored_against_the_target_answers_and_says_so(tmp_path, caplog):
    rows = write_mt_test(tmp_path / "mt", projected=False)
    caplog.set_level(logging.WARNING, logger="flare_ray")
    task = mt_task(tmp_path / "mt")
    test = translate_test_split(task, task.load("test"))
    assert list(test.records["id"]) == [r["id"] for r in rows]  # nothing to filter on: every example kept
    assert test.records["target_answers"] == [r["target_answers"] for r in rows]  # the Swahili gold answers
    assert test.metrics() == {"examples": TOTAL, "examples_total": TOTAL, "english_answers": 0.0}
    assert "scored against the target-language gold answers, not as the authors score it" in caplog.text


def test_a_projected_test_split_that_lost_every_marker_is_an_error_naming_the_file(tmp_path):
    write_mt_test(tmp_path / "mt", lost=range(TOTAL))
    task = mt_task(tmp_path / "mt")
    path = mt_split_path(tmp_path / "mt", "tydiqa", "sw", "test")
    with pytest.raises(TaskDataError, match=rf"{path}: no test example kept its answer markers .* all {TOTAL} records"):
        translate_test_split(task, task.load("test"))


def test_the_offline_test_split_and_classification_are_scored_as_they_are():
    task = get_task(TaskConfig(name="tydiqa", language="sw", max_records={"test": 3}))
    test = translate_test_split(task, task.load("test"))  # "self": the English side is the target text itself
    assert len(test.records) == 3 and test.metrics()["english_answers"] == 1.0
    nusax = get_task(TaskConfig(name="nusax", language="jav", max_records={"test": 3}))
    assert translate_test_split(nusax, nusax.load("test")).metrics() == {}


# -- the report's footnote ----------------------------------------------------------------------------------
class Records(SweepRecords):
    """A TyDiQA sweep's records made here (what ``load_sweep`` reads from MLflow), predictions in memory."""

    def predictions(self, run_id: str, split: str = "test"):
        return self._frames.get(run_id)


def tydiqa_sweep(translate_test: dict[str, dict]) -> Records:
    """A LoRA row and a translate-test row on sw and ko (two seeds each); ``translate_test``: language ->
    the counts each translate-test trial recorded (none: a trial from before they were recorded)."""
    rows, frames = [], {}
    for language in ("sw", "ko"):
        for kind in ("lora", "translate_test"):
            for seed in (0, 1):
                run = f"{kind}-{language}-{seed}"
                counts = translate_test.get(language, {}) if kind == "translate_test" else {}
                rows.append(
                    {
                        "run_id": run,
                        "trial_id": run,
                        "status": "FINISHED",
                        "language": language,
                        "method": kind,
                        "cell": json.dumps({"method.kind": kind}),
                        "configuration": "{}",
                        "seed": seed,
                        "validation": 50.0,
                        "best_epoch": 1,
                        "curve": [(1, 50.0)],
                        "test/exact_match": 40.0 + seed,
                        **{f"test/{k}": v for k, v in counts.items()},
                    }
                )
                right = [100.0 * (i % 2) for i in range(10)]
                frames[run] = pd.DataFrame({"id": [f"e{i}" for i in range(10)], "exact_match": right, "f1": right})
    config = {
        "name": "t",
        "task": {"name": "tydiqa", "languages": ["sw", "ko"], "max_records": {}},
        "model": {"name_or_path": "FacebookAI/xlm-roberta-large"},
        "method": {"kind": "lora"},
        "search": {"metric": "validation/exact_match", "mode": "max", "space": {}},
    }
    provenance = {language: {"test": {"recipe": "mt", "as_in_paper": True}} for language in ("sw", "ko")}
    out = Records("t", "parent-t", "0", config, provenance, pd.DataFrame(rows), client=None)
    out._frames = frames
    return out


def test_the_report_footnote_says_how_translate_test_was_scored_and_on_how_many_examples():
    sweep = tydiqa_sweep(
        {
            "sw": {"examples": 412.0, "examples_total": 500.0, "english_answers": 1.0},
            "ko": {"examples": 300.0, "examples_total": 300.0, "english_answers": 0.0},
        }
    )
    table, _ = cells([sweep], resamples=20, seed=0)
    projected, target = translate_test_notes([sweep], table)
    assert "projected into English by the answer markers" in projected and "translate_test, sw: 412 of 500" in projected
    assert "translate_test, ko" not in projected and "lora" not in projected
    assert "scored against the target-language gold answers" in target and "translate_test, ko" in target
    assert "translate_test, sw" not in target

    # trials from before the counts were recorded, on a translated test split: scored against the target answers
    older = tydiqa_sweep({})
    (note,) = translate_test_notes([older], cells([older], resamples=20, seed=0)[0])
    assert "target-language gold answers" in note and "translate_test, sw; translate_test, ko" in note


# -- the translation stage's test split, as translate-test reads it -----------------------------------------
def test_the_translation_stage_projects_test_answers_that_translate_test_scores_against(tmp_path):
    """``python -m flare_ray.translate`` marks the test contexts (a model-free "translator" here: it prefixes
    every text and loses the markers of every other test context): translate-test then scores the examples
    whose markers survived, against their projected answers, and the others are counted."""
    from flare_ray.translate import pipeline
    from flare_ray.translate.config import parse_config
    from flare_ray.translate.translator import Translation

    def lose_some(segments, config):  # segments: question, context per record
        return [
            Translation("~ " + (s.text.replace("[", "") if i % 4 == 3 else s.text), False)
            for i, s in enumerate(segments)
        ], {"ray": "none (test)"}

    config = parse_config(
        {
            "task": {"name": "tydiqa", "language": "sw", "max_records": {"test": TOTAL}},
            "roles": ["test"],
            "mt_dir": tmp_path / "mt",
        }
    )
    (result,) = pipeline.run(config, translate=lose_some)
    lost = {m["id"] for m in result.provenance["markers_lost"]}
    assert result.provenance["answers_projected"] is True and result.provenance["records_out"] == TOTAL
    assert 0 < len(lost) < TOTAL and {m["reason"] for m in result.provenance["markers_lost"]} == {"markers_malformed"}

    task = mt_task(tmp_path / "mt")
    gold = get_task(TaskConfig(name="tydiqa", language="sw", max_records={"test": TOTAL})).load("test")
    test = translate_test_split(task, task.load("test"))
    assert list(test.records["id"]) == [r["id"] for r in gold if r["id"] not in lost]
    assert test.metrics() == {"examples": TOTAL - len(lost), "examples_total": TOTAL, "english_answers": 1.0}
    projected = [answers[0]["text"] for answers in test.records["target_answers"]]
    assert projected == [r["target_answers"][0]["text"] for r in gold if r["id"] not in lost]  # "~ " moved them only
    assert all(c.startswith("~ ") and "[" not in c for c in test.records["target_context"])
    assert task.score(projected, test.records) == {"exact_match": 100.0, "f1": 100.0}

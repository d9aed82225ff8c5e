"""The NLLB translation pipeline (`python -m flare_ray.translate`).

End to end on a tiny random M2M100 (with NLLB's tokenizer class and language
codes) on a local Ray: NusaX splits are written with provenance and reused from
the cache; TyDiQA answers are carried through markers or dropped and counted.
The marker logic, the language table and every bad-input error are checked
directly, without Ray or a model.
"""

from __future__ import annotations

import json
import logging
import re
import shutil

import datasets
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from flare_ray.cli.translate import build_parser, main
from flare_ray.languages import FALLBACKS, NLLB_CODES, SOURCE, nllb_language
from flare_ray.tasks import TASKS, TaskConfig, get_task
from flare_ray.tasks.base import DATA_DIR, mt_split_path
from flare_ray.translate import pipeline
from flare_ray.translate.config import NOT_HERE, TranslateConfig, parse_config
from flare_ray.translate.markers import MarkerError, Markers, extract_markers, insert_markers
from flare_ray.translate.store import provenance_path
from flare_ray.translate.translator import NllbTranslator, Translation
from tests.helpers import help_text


# -- helpers ------------------------------------------------------------------------------------------------
def write_config(tmp_path, **config):
    path = tmp_path / "translate.yaml"
    path.write_text(yaml.safe_dump(json.loads(json.dumps(config, default=str))))
    return path


def no_translation(segments, config):
    raise AssertionError("the model would be loaded here")


def fake_translate(edit):
    """A translator without a model: ``edit(segment_index, text)`` is the 'translation'."""

    def translate(segments, config):
        return [Translation(edit(i, s.text), False) for i, s in enumerate(segments)], {"ray": "none (test)"}

    return translate


def read_split(mt_dir, task, language, role):
    """A written split, through the task's 'mt' recipe (validated) unless it is empty (datasets cannot read those)."""
    path = mt_split_path(mt_dir, task, language, role)
    if pq.read_metadata(path).num_rows == 0:
        return datasets.Dataset(pq.read_table(path))
    return get_task(TaskConfig(name=task, language=language, mt_dir=mt_dir, splits={role: "mt"})).load(role)


def spans_consistent(records, side):
    for r in records:
        for a in r[f"{side}_answers"]:
            assert r[f"{side}_context"][a["answer_start"] : a["answer_start"] + len(a["text"])] == a["text"], r["id"]
    return True


# -- languages and markers --------------------------------------------------------------------------------
def test_every_paper_language_has_an_nllb_code_the_tokenizer_knows():
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    for task in TASKS.values():
        for language in task.languages:
            assert nllb_language(language).code in FAIRSEQ_LANGUAGE_CODES, (task.name, language)
    assert SOURCE in FAIRSEQ_LANGUAGE_CODES
    assert {
        "jav": "jav_Latn",
        "sw": "swh_Latn",
        "ur": "urd_Arab",
        "my": "mya_Mymr",
        "ar": "arb_Arab",
    }.items() <= NLLB_CODES.items()
    for language in ("mad", "nij", "bbc"):
        assert nllb_language(language).code == "ind_Latn" and nllb_language(language).fallback
    assert "excluded" in FALLBACKS["bbc"][1] and nllb_language("jav").fallback is None
    with pytest.raises(ValueError, match="no NLLB-200 code for language 'xx'"):
        nllb_language("xx")


def test_markers_round_trip_and_scrub_existing_brackets():
    context = "It began in the 1920s.[8] Later [9] more."
    marked = insert_markers(context, {"text": "1920s", "answer_start": 16})
    assert marked == "It began in the [1920s].(8) Later (9) more."
    text, answer = extract_markers(marked)
    assert answer == {"text": "1920s", "answer_start": 16} and text == "It began in the 1920s.(8) Later (9) more."
    # as a translation might come back: spaces inside the markers, answer moved
    text, answer = extract_markers("Ilianza [ miaka ya 1920 ] .")
    assert text == "Ilianza miaka ya 1920 ." and answer == {"text": "miaka ya 1920", "answer_start": 8}
    text, answer = extract_markers("x[ y ]z")
    assert text[answer["answer_start"] :].startswith(answer["text"]) and answer["text"] == "y"
    custom = Markers("<<", ">>")
    assert (
        extract_markers(insert_markers("a b c", {"text": "b", "answer_start": 2}, custom), custom)[1]["answer_start"]
        == 2
    )


@pytest.mark.parametrize(
    "translation, reason",
    [
        ("no markers left", "markers_lost"),
        ("only [ one", "markers_malformed"),
        ("two [a] and [b]", "markers_malformed"),
        ("reversed ] here [", "markers_malformed"),
        ("empty [ ] span", "empty_answer"),
    ],
)
def test_lost_or_malformed_markers_are_errors(translation, reason):
    with pytest.raises(MarkerError) as err:
        extract_markers(translation)
    assert err.value.reason == reason


def test_answer_must_be_where_it_says():
    with pytest.raises(MarkerError, match="not at answer_start 3"):
        insert_markers("abcdef", {"text": "xyz", "answer_start": 3})


def test_translator_uses_nllb_language_codes_on_the_tiny_model(tiny_path):
    """The actor's code, in process: src_lang frames the input, the target code is forced first, per direction."""
    translator = NllbTranslator(str(tiny_path("m2m_100")), max_length=16, dtype="float32", use_gpu=False)
    tok = translator.tokenizer
    assert type(tok).__name__ == "NllbTokenizer"
    generate, seen = translator.model.generate, []

    def recording_generate(**kwargs):
        output = generate(**kwargs)
        seen.append((tok.convert_ids_to_tokens(int(kwargs["input_ids"][0, 0])), kwargs, output))
        return output

    translator.model.generate = recording_generate
    batch = {
        "key": np.arange(3),
        "src": np.array(["eng_Latn", "jav_Latn", "eng_Latn"], dtype=object),
        "tgt": np.array(["jav_Latn", "eng_Latn", "jav_Latn"], dtype=object),
        "text": np.array(["I like this food", "Aku seneng panganan iki", "word " * 20], dtype=object),
    }
    out = translator(batch)
    assert list(out["key"]) == [0, 1, 2] and all(isinstance(t, str) for t in out["translation"])
    assert list(out["truncated"]) == [False, False, True]
    assert [(src, kwargs["forced_bos_token_id"]) for src, kwargs, _ in seen] == [
        ("eng_Latn", tok.convert_tokens_to_ids("jav_Latn")),
        ("jav_Latn", tok.convert_tokens_to_ids("eng_Latn")),
    ]
    for _, kwargs, output in seen:
        assert kwargs["num_beams"] == 1 and kwargs["do_sample"] is False
        assert (output[:, 1] == kwargs["forced_bos_token_id"]).all()  # after the decoder start token


# -- configuration, help and bad input -------------------------------------------------------------------------
def test_help_documents_every_option_and_key(capsys):
    text = help_text(main, build_parser(), capsys)
    for action in build_parser()._actions:
        for option in action.option_strings:
            assert option in text
    assert "splits:" not in text  # a task key that does not apply to translation
    for key in [*TranslateConfig.model_fields, *(k for k in TaskConfig.model_fields if k not in NOT_HERE)]:
        assert f"{key}:" in text, key
        field = TranslateConfig.model_fields.get(key) or TaskConfig.model_fields[key]
        assert field.description, key
    assert "RAY_ADDRESS" in text and "mad ind_Latn*" in text


def nusax_copy(tmp_path):
    """A writable copy of the NusaX files of Javanese and English."""
    root = tmp_path / "nusax"
    for folder in ("javanese", "english"):
        shutil.copytree(DATA_DIR / "nusax" / "sentiment" / folder, root / "sentiment" / folder)
    return root


def edit_csv(path, old, new, count=1):
    path.write_text(path.read_text(encoding="utf-8").replace(old, new, count), encoding="utf-8")


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_file", r"javanese/valid\.csv: file not found"),
        ("wrong_column", r"javanese/train\.csv: missing columns \['label'\]"),
        ("bad_label", r"javanese/train\.csv: line 2: label 'happy' is not one of"),
        ("unknown_language", r"task: language 'xx' is not a language of nusax; expected one of"),
        (
            "unknown_key",
            r"colour: unknown key 'colour'; expected one of \['model', 'batch_size', .*'task', 'mt_dir', 'roles', 'back_translate'\]",
        ),
        (
            "unknown_task_key",
            r"task\.split: unknown key 'split' \(did you mean 'splits'\?\); expected one of \['name', 'language'",
        ),
        ("splits_given", r"task: task\.splits and task\.mt_dir do not apply"),
        ("missing_config", r"nope\.yaml: configuration file not found"),
    ],
)
def test_bad_input_is_one_clear_error_before_any_model_load(tmp_path, monkeypatch, capsys, case, expected):
    monkeypatch.setattr(pipeline, "translate_with_ray", no_translation)
    data = nusax_copy(tmp_path)
    config = {"task": {"name": "nusax", "language": "jav", "data_dir": data}, "mt_dir": tmp_path / "mt"}
    if case == "missing_file":
        (data / "sentiment" / "javanese" / "valid.csv").unlink()
    elif case == "wrong_column":
        edit_csv(data / "sentiment" / "javanese" / "train.csv", "label", "sentiment")
    elif case == "bad_label":
        edit_csv(data / "sentiment" / "javanese" / "train.csv", "bni!,neutral", "bni!,happy")  # the first row
    elif case == "unknown_language":
        config["task"]["language"] = "xx"
    elif case == "unknown_key":
        config["colour"] = "blue"
    elif case == "unknown_task_key":
        config["task"]["split"] = "train"
    elif case == "splits_given":
        config["task"]["splits"] = {"train": "mt"}
    path = tmp_path / "nope.yaml" if case == "missing_config" else write_config(tmp_path, **config)
    with pytest.raises(SystemExit) as exit_:
        main([str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("error:") == 1
    assert re.search(expected, err), err
    if case in ("unknown_language", "unknown_key", "unknown_task_key", "missing_config"):
        assert str(path) in err
    assert not (tmp_path / "mt").exists()


def test_cache_key_follows_model_decoding_and_inputs(tmp_path):
    base = {
        "task": {"name": "nusax", "language": "jav", "max_records": {"train": 3}},
        "mt_dir": tmp_path,
        "roles": ["train"],
    }

    def key(**change):
        config = parse_config({**base, **change})
        return pipeline.prepare(config)[2][0].cache_key

    reference = key()
    assert key(batch_size=2, concurrency=3, num_gpus=0) == reference  # how it runs, not what it makes
    assert key(max_length=64) != reference
    assert key(model="facebook/nllb-200-distilled-600M") != reference
    assert key(task={**base["task"], "max_records": {"train": 4}}) != reference  # other input records


# -- end to end -------------------------------------------------------------------------------------------------
@pytest.mark.ray
def test_nusax_end_to_end_on_ray_then_cached(tmp_path, tiny_path, local_ray, monkeypatch, caplog, capsys):
    mt_dir = tmp_path / "mt"
    limits = {"train": 4, "validation": 2, "test": 3}
    path = write_config(
        tmp_path,
        task={"name": "nusax", "language": "jav", "max_records": limits},
        mt_dir=mt_dir,
        model=tiny_path("m2m_100"),
        max_length=12,
        batch_size=4,
    )
    results = main([str(path)])
    assert [r.role for r in results] == ["train", "validation", "test"] and not any(r.cached for r in results)

    gold = get_task(TaskConfig(name="nusax", language="jav", max_records=limits))
    mt = get_task(TaskConfig(name="nusax", language="jav", mt_dir=mt_dir, splits=dict.fromkeys(limits, "mt")))
    for role, n in limits.items():
        split = mt_split_path(mt_dir, "nusax", "jav", role)
        prov = json.loads(provenance_path(split).read_text())
        assert prov["records_in"] == prov["records_out"] == n and prov["dropped"] == []
        assert prov["mt_model"] == str(tiny_path("m2m_100")) and prov["decoding"]["num_beams"] == 1
        assert prov["decoding"]["do_sample"] is False and prov["run"]["concurrency"] == 1
        assert prov["data_files_sha256"]["sentiment/javanese/train.csv"] and prov["versions"]["transformers"]
        assert prov["language_fallback"] is None
        translated = mt.load(role)  # read back through the task's 'mt' recipe, validated
        original = gold.load(role)
        assert translated["id"] == original["id"] and translated["label"] == original["label"]
        kept, replaced = ("source", "target") if role != "test" else ("target", "source")
        assert translated[f"{kept}_text"] == original[f"{kept}_text"]
        assert translated[f"{replaced}_text"] != original[f"{replaced}_text"]
        codes = [prov["source_language"]["nllb_code"], prov["target_language"]["nllb_code"]]
        assert codes == (["eng_Latn", "jav_Latn"] if role != "test" else ["jav_Latn", "eng_Latn"])
    stamps = {p: p.stat().st_mtime_ns for p in mt_dir.rglob("*") if p.is_file()}

    # Same inputs and settings: every role is reused; nothing is translated, no model is loaded.
    monkeypatch.setattr(pipeline, "translate_with_ray", no_translation)
    caplog.set_level(logging.INFO, logger="flare_ray")
    results = main([str(path)])
    assert all(r.cached for r in results)
    assert caplog.text.count("reusing cached translation") == 3
    assert "reused (cached)" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in mt_dir.rglob("*") if p.is_file()} == stamps


@pytest.mark.ray
def test_tydiqa_answers_through_markers_on_ray(tmp_path, tiny_path, local_ray):
    mt_dir = tmp_path / "mt"
    config = parse_config(
        {
            "task": {"name": "tydiqa", "language": "sw", "max_records": {"train": 4, "test": 3}},
            "roles": ["train", "test"],
            "mt_dir": mt_dir,
            "model": str(tiny_path("m2m_100")),
            "max_length": 16,
        }
    )
    results = {r.role: r for r in pipeline.run(config)}
    for role, side in (("train", "target"), ("test", "source")):
        prov = results[role].provenance
        records = read_split(mt_dir, "tydiqa", "sw", role)
        assert len(records) == prov["records_out"]
        assert prov["records_out"] + len(prov["dropped"]) == prov["records_in"] == (4 if role == "train" else 3)
        assert spans_consistent(records, side)
    assert results["train"].provenance["answer_markers"] == ["[", "]"]
    # the test set stays whole: translated with markers (as the authors), a record whose markers are lost is kept
    # with empty source_answers and listed
    test = results["test"].provenance
    assert test["dropped"] == [] and test["records_out"] == 3
    assert test["answer_markers"] == ["[", "]"] and test["answers_projected"] is True
    records = read_split(mt_dir, "tydiqa", "sw", "test")
    lost = {m["id"] for m in test["markers_lost"]}
    assert all(bool(r["source_answers"]) == (r["id"] not in lost) and r["target_answers"] for r in records)
    assert all("[" not in r["source_context"] and "]" not in r["source_context"] for r in records if r["id"] in lost)


def test_tydiqa_projection_keeps_consistent_answers_and_counts_the_rest(tmp_path):
    """Through the whole pipeline with a model-free "translator" that loses the markers of every other record."""
    config = parse_config(
        {
            "task": {"name": "tydiqa", "language": "ko", "max_records": {"train": 8, "validation": 6}},
            "roles": ["train", "validation"],
            "mt_dir": tmp_path,
        }
    )
    # segments are question, context per record: the contexts of odd records lose a marker, the rest move by 2
    lose_some = fake_translate(lambda i, text: text.replace("]", "") if i % 4 == 3 else "~ " + text)
    results = {r.role: r.provenance for r in pipeline.run(config, translate=lose_some)}
    for role, side in (("train", "target"), ("validation", "target")):
        prov = results[role]
        records = read_split(tmp_path, "tydiqa", "ko", role)
        assert 0 < len(records) < prov["records_in"]
        assert len(records) + len(prov["dropped"]) == prov["records_in"]
        assert {d["reason"] for d in prov["dropped"]} == {"markers_malformed"}
        assert spans_consistent(records, side) and all(len(r[f"{side}_answers"]) == 1 for r in records)
        assert all(r[f"{side}_context"].startswith("~ ") and "[" not in r[f"{side}_context"] for r in records)


def tydiqa_copy(tmp_path):
    """A writable copy of the TyDiQA files of Swahili (test) and English (train, validation)."""
    root = tmp_path / "tydiqa"
    for folder in ("swahili", "english"):
        shutil.copytree(DATA_DIR / "tydiqa" / folder, root / folder)
    return root


def test_tydiqa_test_contexts_carry_the_gold_answer_between_markers_as_the_authors(tmp_path):
    """Every role's QA contexts reach the MT model with their answer between markers (the authors mark the test
    split too): the test answer is projected into English (source_answers); a test record whose markers are
    lost is kept, without English answers, and listed; train and validation records that lose them are dropped."""
    data = tydiqa_copy(tmp_path)
    limits = {"train": 3, "validation": 3, "test": 3}
    seen = []

    def identity(segments, config):
        seen.extend(segments)
        return [Translation(s.text, False) for s in segments], {"ray": "none (test)"}

    config = parse_config(
        {
            "task": {"name": "tydiqa", "language": "sw", "data_dir": data, "max_records": limits},
            "mt_dir": tmp_path / "mt",
        }
    )
    results = {r.role: r.provenance for r in pipeline.run(config, translate=identity)}
    sent = {s.text for s in seen}
    gold = get_task(TaskConfig(name="tydiqa", language="sw", data_dir=data, max_records=limits)).load("test")
    for record in gold:
        assert insert_markers(record["target_context"], record["target_answers"][0]) in sent
    assert "[1]" in gold[1]["target_context"]  # a citation: sent with stand-ins, so the only markers are ours
    for role in ("train", "validation", "test"):
        assert results[role]["answer_markers"] == ["[", "]"] and results[role]["answers_projected"] is True
    assert results["test"]["markers_lost"] == [] and results["train"]["markers_lost"] is None
    written = read_split(tmp_path / "mt", "tydiqa", "sw", "test")
    assert [a[0]["text"] for a in written["source_answers"]] == [
        Markers().scrub(a[0]["text"]) for a in gold["target_answers"]
    ]
    assert written["target_answers"] == gold["target_answers"] and spans_consistent(written, "source")

    # markers lost in the translation of the first test context (segments: question, context per record)
    def lose_first(segments, config):
        return [
            Translation(s.text.replace("]", "") if s.src == "swh_Latn" and i == 1 else s.text, False)
            for i, s in enumerate(segments)
        ], {"ray": "none (test)"}

    config = parse_config(
        {
            "task": {"name": "tydiqa", "language": "sw", "data_dir": data, "max_records": limits},
            "roles": ["test"],
            "mt_dir": tmp_path / "mt2",
        }
    )
    (result,) = pipeline.run(config, translate=lose_first)
    assert result.provenance["markers_lost"] == [{"id": gold[0]["id"], "reason": "markers_malformed"}]
    assert result.provenance["dropped"] == [] and result.provenance["records_out"] == 3
    written = read_split(tmp_path / "mt2", "tydiqa", "sw", "test")
    assert written["source_answers"][0] == [] and all(written["source_answers"][1:])
    assert "[" not in written["source_context"][0]


def test_fallback_language_is_logged_and_recorded_and_force_translates_again(tmp_path, caplog):
    config = parse_config(
        {
            "task": {"name": "nusax", "language": "bbc", "max_records": {"test": 2}},
            "roles": ["test"],
            "mt_dir": tmp_path,
        }
    )
    caplog.set_level(logging.INFO, logger="flare_ray")
    (result,) = pipeline.run(config, translate=fake_translate(lambda i, text: text[::-1]))
    assert "paper excluded bbc" in caplog.text and "ind_Latn" in caplog.text
    prov = result.provenance
    assert prov["source_language"] == {"language": "bbc", "nllb_code": "ind_Latn", "fallback": FALLBACKS["bbc"][1]}
    assert prov["language_fallback"] == FALLBACKS["bbc"][1]
    assert pipeline.run(config, translate=no_translation)[0].cached
    (again,) = pipeline.run(config, force=True, translate=fake_translate(lambda i, text: text))
    assert not again.cached and again.provenance["cache_key"] == prov["cache_key"]


def test_dry_run_validates_without_translating(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(pipeline, "translate_with_ray", no_translation)
    caplog.set_level(logging.INFO, logger="flare_ray")
    path = write_config(
        tmp_path, task={"name": "xnli", "language": "sw", "max_records": {"test": 2}}, mt_dir=tmp_path / "mt"
    )
    assert main([str(path), "--dry-run"]) == []
    assert "3 role(s) would be translated" in caplog.text and not (tmp_path / "mt").exists()


def test_back_translation_for_xmixup_follows_the_forward_translation_and_serves_plain_requests(tmp_path):
    """``back_translate``: the training set, once translated into the language, goes back into English as
    ``back_translation_<field>`` columns (X-Mixup's scheduled source); a later request without it reuses that
    split, and one with it does not reuse a split made without."""
    seen = []

    def tagged(segments, config):  # the 'translation' names its target language
        seen.append([s.tgt for s in segments])
        return [Translation(f"<{s.tgt}> {s.text}", False) for s in segments], {"ray": "none (test)"}

    base = {
        "task": {"name": "nusax", "language": "jav", "max_records": {"train": 3}},
        "mt_dir": tmp_path / "mt",
        "roles": ["train"],
    }
    (result,) = pipeline.run(parse_config({**base, "back_translate": True}), translate=tagged)
    assert [set(codes) for codes in seen] == [{"jav_Latn"}, {"eng_Latn"}]  # forward, then back
    records = read_split(tmp_path / "mt", "nusax", "jav", "train")
    assert all(r["target_text"] == f"<jav_Latn> {r['source_text']}" for r in records)
    assert all(r["back_translation_text"] == f"<eng_Latn> {r['target_text']}" for r in records)
    assert result.provenance["back_translation"]["columns"] == ["back_translation_text"]
    assert result.provenance["back_translation"]["segments"] == 3
    (again,) = pipeline.run(parse_config(base), translate=no_translation)  # a superset serves the plain request
    assert again.cached
    plain = {**base, "mt_dir": tmp_path / "plain"}
    pipeline.run(parse_config(plain), translate=tagged)
    assert "back_translation_text" not in read_split(tmp_path / "plain", "nusax", "jav", "train").column_names
    seen.clear()
    pipeline.run(parse_config({**plain, "back_translate": True}), translate=tagged)
    assert len(seen) == 2  # made again, with it
    assert "back_translation_text" in read_split(tmp_path / "plain", "nusax", "jav", "train").column_names

"""The tasks: vendored data and its parallel alignment, encodings per family, metrics, bad input."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from flare_ray.tasks import DATA_DIR, TaskConfig, TaskDataError, get_task
from flare_ray.tasks.encoding import IGNORE, TaskEncoder
from flare_ray.tasks.metrics import classification_scores, squad_scores
from flare_ray.tasks.nusax import LANGUAGES as NUSAX_LANGUAGES
from tests.helpers import flare


# -- vendored data and alignment ---------------------------------------------
@pytest.mark.parametrize("language", sorted(set(NUSAX_LANGUAGES) - {"eng"}))
def test_nusax_is_parallel_with_english(language):
    task = get_task({"name": "nusax", "language": language})
    english = {}
    with open(DATA_DIR / "nusax/sentiment/english/test.csv", encoding="utf-8") as f:
        english = {row["id"]: row for row in csv.DictReader(f)}
    sizes = {role: len(task.load(role)) for role in ("train", "validation", "test")}
    assert sizes == {"train": 500, "validation": 100, "test": 400}
    for record in task.load("test"):
        assert record["source_text"] == english[record["id"]]["text"]
        assert record["label"] == english[record["id"]]["label"]
        assert record["target_text"] and record["target_text"] != record["source_text"] or language == "ind"


@pytest.mark.parametrize("language", ["sw", "ur", "my"])
def test_xnli_rows_align_with_the_english_side(language):
    task = get_task({"name": "xnli", "language": language})
    with open(DATA_DIR / "xnli/my/my.genre.dev.tsv", encoding="utf-8") as f:
        english = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    train, validation, test = (task.load(r) for r in ("train", "validation", "test"))
    assert (len(train), len(validation), len(test)) == (2001, 489, 5010)
    for i in (0, 1234, 2000):
        assert train[i]["source_premise"] == english[i]["sentence1_en"]
        assert train[i]["label"] == english[i]["label"]
    assert validation[0]["source_hypothesis"] == english[2001]["sentence2_en"]
    assert set(train["id"]).isdisjoint(validation["id"])
    assert set(train["source_premise"]).isdisjoint(validation["source_premise"])  # no premise in both
    assert task.provenance()["test"]["recipe"] == "trans_test"


def test_tydiqa_answers_sit_in_their_contexts():
    task = get_task({"name": "tydiqa", "language": "sw"})
    test = task.load("test")
    assert len(test) == 499
    for record in test:
        for answer in record["target_answers"]:
            start = answer["answer_start"]
            assert record["target_context"][start : start + len(answer["text"])] == answer["text"]
    provenance = task.provenance()
    assert provenance["train"]["as_in_paper"] is False and "English" in provenance["train"]["made_of"]


# -- encoding ---------------------------------------------------------------
@pytest.mark.parametrize("arch,family", [("mt5", "encoder_decoder"), ("llama", "decoder")])
@pytest.mark.parametrize("task_name,language", [("nusax", "jav"), ("xnli", "sw"), ("tydiqa", "sw")])
def test_generative_encoding_round_trips_and_masks_only_the_answer(tiny_path, arch, family, task_name, language):
    tok = AutoTokenizer.from_pretrained(tiny_path(arch))
    task = get_task({"name": task_name, "language": language, "max_records": {"test": 4}})
    records = list(task.load("test"))
    batch = TaskEncoder(task, tok, family, max_length=96, generative=True).train_batch(records).inputs
    labels = batch["labels"]
    for i, record in enumerate(records):
        answer_ids = labels[i][labels[i] != IGNORE]
        assert tok.decode(answer_ids, skip_special_tokens=True).strip() == task.answer(record)
        assert answer_ids[-1] == tok.eos_token_id
    if family == "decoder":
        real = batch["attention_mask"].bool()
        prompt = real & (labels == IGNORE)
        for i, record in enumerate(records):
            n_prompt = int(prompt[i].sum())
            assert n_prompt > 0 and torch.all(labels[i][:n_prompt] == IGNORE)  # prompt first, then answer
            assert tok.decode(batch["input_ids"][i][:n_prompt], skip_special_tokens=True).rstrip().endswith("Answer:")
        assert batch["input_ids"].shape[1] <= 96
    assert "source_input_ids" in batch and batch["source_input_ids"].shape[0] == len(records)


def test_encoder_span_labels_point_at_the_answer_and_truncation_is_not_an_answer(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path("xlm-roberta"))
    task = get_task({"name": "tydiqa", "language": "sw", "max_records": {"test": 16}})
    records = list(task.load("test"))
    encoded = TaskEncoder(task, tok, "encoder", max_length=64).train_batch(records)
    starts, ends = encoded.inputs["start_positions"], encoded.inputs["end_positions"]
    kept = 0
    for i, record in enumerate(records):
        meta = encoded.meta[i]
        if starts[i] == 0:  # the answer was cut off: no span may claim it
            assert ends[i] == 0
            continue
        kept += 1
        text = record["target_context"][meta["offsets"][starts[i]][0] : meta["offsets"][ends[i]][1]]
        assert text.strip() == record["target_answers"][0]["text"].strip()
    assert 0 < kept < len(records), "the case needs both fitting and truncated answers"


def test_classification_encoding(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path("xlm-roberta"))
    task = get_task({"name": "xnli", "language": "ur", "max_records": {"validation": 5}})
    records = list(task.load("validation"))
    inputs = TaskEncoder(task, tok, "encoder", max_length=64).train_batch(records).inputs
    assert inputs["labels"].tolist() == [task.labels.index(r["label"]) for r in records]
    assert set(inputs) == {"input_ids", "attention_mask", "labels", "source_input_ids", "source_attention_mask"}


@pytest.mark.parametrize("family", ["encoder", "encoder_decoder", "decoder"])
@pytest.mark.parametrize("task_name,language", [("nusax", "sun"), ("tydiqa", "id")])
def test_predict_and_score_with_a_flare_model(tiny_path, family, task_name, language):
    fm, tok = flare(tiny_path, family)
    if family == "encoder" and task_name == "tydiqa":
        from transformers import AutoModelForQuestionAnswering

        from flare_ray.fusion import FlareConfig, get_flare_model

        fm = get_flare_model(
            AutoModelForQuestionAnswering.from_pretrained(tiny_path("xlm-roberta")), FlareConfig()
        ).eval()
    task = get_task({"name": task_name, "language": language, "max_records": {"test": 6}})
    records = task.load("test")
    encoder = TaskEncoder(task, tok, family, max_length=64, generative=family != "encoder")  # the helper's mT5 is an LM
    predictions = encoder.predict(fm, list(records), batch_size=4, max_new_tokens=4)
    assert len(predictions) == len(records)
    scores = task.score(predictions, records)
    assert task.primary_metric in scores and 0.0 <= scores[task.primary_metric] <= 100.0


# -- metrics ---------------------------------------------------------------------
def test_classification_metrics_by_hand():
    labels = ("positive", "neutral", "negative")
    refs = ["positive", "positive", "neutral", "negative"]
    preds = ["positive", None, "neutral", "positive"]  # None: generated text that is no label
    scores = classification_scores(preds, refs, labels)
    assert scores["accuracy"] == pytest.approx(50.0)
    assert scores["invalid"] == 1.0
    # positive: P=1/2 R=1/2 F=1/2; neutral: F=1; negative: F=0 -> macro 1/2
    assert scores["macro_f1"] == pytest.approx(50.0)


def test_squad_metrics_by_hand():
    # normalisation: case, punctuation and articles are ignored
    assert squad_scores(["The Cat!"], [["cat"]]) == {"exact_match": 100.0, "f1": 100.0}
    # partial overlap: pred {red, house}, gold {big, red, house}: P=1, R=2/3, F1=0.8
    scores = squad_scores(["red house"], [["big red house"]])
    assert scores["exact_match"] == 0.0 and scores["f1"] == pytest.approx(80.0)
    # best over gold answers
    assert squad_scores(["Paris"], [["London", "paris"]])["exact_match"] == 100.0
    # a truncated context yields no answer: the empty prediction is wrong, not a correct empty answer
    assert squad_scores([""], [["1999"]]) == {"exact_match": 0.0, "f1": 0.0}


def test_generated_strings_that_are_no_label_are_counted_wrong():
    task = get_task({"name": "nusax", "language": "jav"})
    assert task.parse(" Positive ") == "positive"
    assert task.parse("good") is None


# -- bad input ------------------------------------------------------------------
@pytest.fixture
def nusax_copy(tmp_path):
    shutil.copytree(DATA_DIR / "nusax", tmp_path / "nusax")
    return tmp_path / "nusax"


def test_unknown_language():
    with pytest.raises(TaskDataError, match=r"task nusax: unknown language 'xx'; expected one of \['ace'"):
        get_task({"name": "nusax", "language": "xx"})


def test_unknown_task_and_unknown_key():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="name"):
        TaskConfig(name="squad", language="en")
    with pytest.raises(ValidationError, match="lang"):
        TaskConfig(name="nusax", language="jav", lang="jav")


def test_missing_file(nusax_copy):
    (nusax_copy / "sentiment/javanese/valid.csv").unlink()
    task = get_task({"name": "nusax", "language": "jav", "data_dir": str(nusax_copy)})
    with pytest.raises(TaskDataError, match=r"javanese/valid.csv: file not found"):
        task.load("validation")


def test_wrong_column(nusax_copy):
    path = nusax_copy / "sentiment/javanese/test.csv"
    path.write_text(path.read_text(encoding="utf-8").replace("id,text,label", "id,sentence,label", 1), encoding="utf-8")
    task = get_task({"name": "nusax", "language": "jav", "data_dir": str(nusax_copy)})
    with pytest.raises(TaskDataError, match=r"javanese/test.csv: missing columns \['text'\]"):
        task.load("test")


def test_label_outside_the_label_set(nusax_copy):
    path = nusax_copy / "sentiment/javanese/train.csv"
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",very positive"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    task = get_task({"name": "nusax", "language": "jav", "data_dir": str(nusax_copy)})
    with pytest.raises(TaskDataError, match=r"train.csv: line 4: label 'very positive' is not one of"):
        task.load("train")


def test_bad_recipes():
    with pytest.raises(TaskDataError, match=r"splits.train = 'gold' is not a recipe of this task"):
        get_task({"name": "xnli", "language": "sw", "splits": {"train": "gold"}})
    with pytest.raises(TaskDataError, match=r"splits.test = 'mt' needs mt_dir"):
        get_task({"name": "nusax", "language": "jav", "splits": {"test": "mt"}})


def test_tydiqa_answer_not_in_context(tmp_path):
    shutil.copytree(DATA_DIR / "tydiqa/swahili", tmp_path / "swahili")
    path = tmp_path / "swahili/swahili_tydiqa_dev.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    data["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 3
    path.write_text(json.dumps(data), encoding="utf-8")
    task = get_task({"name": "tydiqa", "language": "sw", "data_dir": str(tmp_path)})
    with pytest.raises(
        TaskDataError, match=r"data\[0\].paragraphs\[0\].qas\[0\]: answer '1999' is not at answer_start"
    ):
        task.load("test")


# -- hub loading (the hub is offline here: datasets.load_dataset returns hub-shaped data) --------
def _fake_hub(monkeypatch, tables):
    import datasets

    calls = []

    def load_dataset(hub_id, config, split):
        calls.append((hub_id, config, split))
        return tables[(config, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_nusax_from_a_hub_dataset_id(monkeypatch):
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "text": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["negative", "neutral", "positive"]),
        }
    )
    table = lambda texts: datasets.Dataset.from_dict(  # noqa: E731
        {"id": ["1", "2"], "text": texts, "label": [2, 0]}, features=features
    )
    calls = _fake_hub(monkeypatch, {("jav", "test"): table(["apik", "ala"]), ("eng", "test"): table(["good", "bad"])})
    task = get_task({"name": "nusax", "language": "jav", "hub_id": "indonlp/NusaX-senti"})
    records = task.load("test")
    assert calls == [("indonlp/NusaX-senti", "jav", "test"), ("indonlp/NusaX-senti", "eng", "test")]
    assert records.to_list() == [
        {"id": "1", "label": "positive", "target_text": "apik", "source_text": "good"},
        {"id": "2", "label": "negative", "target_text": "ala", "source_text": "bad"},
    ]
    assert task.provenance()["test"]["recipe"] == "hub"


def test_xnli_from_a_hub_dataset_id_records_what_the_hub_gives(monkeypatch):
    import datasets

    features = datasets.Features(
        {
            "premise": datasets.Value("string"),
            "hypothesis": datasets.Value("string"),
            "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        }
    )

    def table(p):
        return datasets.Dataset.from_dict({"premise": [p], "hypothesis": [p + "?"], "label": [2]}, features=features)

    _fake_hub(monkeypatch, {("sw", "train"): table("mvua"), ("en", "train"): table("rain")})
    task = get_task({"name": "xnli", "language": "sw", "hub_id": "facebook/xnli"})
    (record,) = task.load("train").to_list()
    assert (
        record["label"] == "contradiction" and record["target_premise"] == "mvua" and record["source_premise"] == "rain"
    )
    assert "MultiNLI" in task.provenance()["train"]["made_of"]


def test_tydiqa_from_a_hub_dataset_id(monkeypatch):
    import datasets

    data = datasets.Dataset.from_list(
        [
            {
                "id": "swahili-1",
                "title": "",
                "context": "Alizaliwa 1999.",
                "question": "Lini?",
                "answers": {"text": ["1999"], "answer_start": [10]},
            },
            {
                "id": "english-2",
                "title": "",
                "context": "x",
                "question": "y",
                "answers": {"text": ["x"], "answer_start": [0]},
            },
        ]
    )
    _fake_hub(monkeypatch, {("secondary_task", "validation"): data})
    task = get_task({"name": "tydiqa", "language": "sw", "hub_id": "google-research-datasets/tydiqa"})
    (record,) = task.load("test").to_list()
    assert record["id"] == "swahili-1"
    assert record["target_answers"] == [{"text": "1999", "answer_start": 10}]

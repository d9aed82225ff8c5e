"""Which rows each role is made of: validation, test (and train) never share rows, for every task, every
language and every recipe; a combination that would (TyDiQA with target language ``en``) is refused when
the task is made, before any data is read or any model is loaded."""

from __future__ import annotations

import itertools
import textwrap

import pytest

from flare_ray.tasks import TASKS, TaskConfig, TaskDataError, get_task
from flare_ray.tasks.nusax import NusaX

REFUSED = {("tydiqa", "en")}  # validation and test would both be the English dev set
EN_MESSAGE = (
    r"tydiqa: target language 'en': validation and test would be the same English dev set "
    r"\(english_tydiqa_dev\.json\), with recipes validation='{validation}' and test='{test}': model selection and "
    r"early stopping would see the test set, and the test score would not be held out; no recipe of tydiqa keeps "
    r"them apart for English .*choose a target language other than 'en'"
)
PAIRS = (("validation", "test"), ("train", "test"), ("train", "validation"))
CASES = [(name, language) for name, task in TASKS.items() for language in sorted(task.languages)]


def rows(records, side, fields):
    """Each record's texts of one side, as one tuple (a row, whatever its id)."""
    return {tuple(r[f"{side}_{f}"] for f in fields) for r in records}


@pytest.mark.parametrize("name,language", CASES)
def test_default_splits_share_no_rows(name, language):
    """Load every role of every task and language (default recipes): no id and no row of one role is in another."""
    config = {"name": name, "language": language}
    if (name, language) in REFUSED:
        with pytest.raises(TaskDataError, match=EN_MESSAGE.format(validation="english", test="self")):
            get_task(config)
        return
    task = get_task(config)
    splits = {role: task.load(role) for role in ("train", "validation", "test")}
    for first, second in PAIRS:
        a, b = splits[first], splits[second]
        assert len(a) and len(b)
        assert set(a["id"]).isdisjoint(b["id"]), (first, second)
        for side in ("target", "source"):
            shared = rows(a, side, task.text_fields) & rows(b, side, task.text_fields)
            assert not shared, (first, second, side, sorted(shared)[:3])
        assert task.split_rows(first, task.recipe(first)) != task.split_rows(second, task.recipe(second))


def recipe_combinations(task):
    roles = ("train", "validation", "test")
    return [dict(zip(roles, combo)) for combo in itertools.product(*(sorted(task.recipes[r]) for r in roles))]


@pytest.mark.parametrize("name,language", CASES)
def test_every_recipe_combination_is_checked(name, language, tmp_path):
    """Every combination of recipes, local and from a hub id: refused exactly where two roles coincide."""
    task_class = TASKS[name]
    for splits, hub_id in itertools.product(recipe_combinations(task_class), (None, "some/hub-copy")):
        config = TaskConfig(name=name, language=language, splits=splits, mt_dir=tmp_path, hub_id=hub_id)
        if (name, language) in REFUSED:
            with pytest.raises(TaskDataError, match=EN_MESSAGE.format(**splits)):
                get_task(config)
        else:
            task = get_task(config)  # reads no data
            described = {role: task.split_rows(role, splits[role]) for role in splits}
            assert len(set(described.values())) == 3, described


def test_tydiqa_other_languages_validate_on_english_and_test_on_their_own_dev_set():
    for language in sorted(set(TASKS["tydiqa"].languages) - {"en"}):
        task = get_task({"name": "tydiqa", "language": language})
        assert task.split_rows("validation", "english") == "English dev set (english_tydiqa_dev.json)"
        assert task.split_rows("test", "self").endswith("_tydiqa_dev.json)") and "english" not in task.split_rows(
            "test", "self"
        )


def test_coinciding_roles_of_any_task_are_refused(monkeypatch):
    """The check is the task interface's: a task whose validation and test rows coincide is refused, with its name,
    language, recipes and why."""
    monkeypatch.setattr(
        NusaX, "split_rows", lambda self, role, recipe: "NusaX test.csv" if role != "train" else "NusaX train.csv"
    )
    with pytest.raises(
        TaskDataError,
        match=r"nusax: target language 'jav': validation and test would be the same NusaX test\.csv, with recipes "
        r"validation='gold' and test='gold': model selection .*; choose split recipes \(splits\) that keep them apart",
    ):
        get_task({"name": "nusax", "language": "jav"})


def test_experiment_config_reports_tydiqa_en_before_any_model_loads(tmp_path):
    from flare_ray.experiment import ExperimentConfigError, load_experiment

    path = tmp_path / "exp.yaml"
    path.write_text(
        textwrap.dedent("""\
        name: t
        model: {name_or_path: "tiny:xlm-roberta"}
        task: {name: tydiqa, languages: [sw, en]}
        training: {epochs: 1}
        """)
    )
    with pytest.raises(ExperimentConfigError) as info:
        load_experiment(path)
    message = str(info.value)
    assert str(path) in message and "tydiqa: target language 'en': validation and test would be the same" in message
    assert "task.languages[1]" in message  # the key that names 'en'


def test_translation_job_refuses_tydiqa_en_before_any_model_loads(tmp_path, capsys):
    import yaml

    from flare_ray.cli.translate import main

    path = tmp_path / "translate.yaml"
    path.write_text(yaml.safe_dump({"task": {"name": "tydiqa", "language": "en"}, "mt_dir": str(tmp_path / "mt")}))
    with pytest.raises(SystemExit) as exit_:
        main([str(path), "--dry-run"])
    assert exit_.value.code == 2
    assert "error: tydiqa: target language 'en': validation and test would be the same" in capsys.readouterr().err
    assert not (tmp_path / "mt").exists()

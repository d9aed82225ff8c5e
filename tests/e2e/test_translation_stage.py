"""Translation as a stage of the sweep: ``task.splits: mt`` without ``task.mt_dir`` makes the sweep translate into
``<storage_path>/mt`` before its trials (the tiny NLLB-shaped model, offline), log what it made on the parent run,
and show it in the dry run; a second sweep with the same inputs reuses every split (nothing translated)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from flare_ray.experiment import ExperimentConfigError, load_experiment
from flare_ray.tasks.base import mt_split_path
from tests.helpers import QUICKSTART, REPO
from tests.sweeps import environment, mlflow_runs, run_tune

MT = [
    "task.splits={train: mt, validation: mt, test: mt}",
    "translation.model=tiny:m2m_100",
    "translation.max_length=24",
    "translation.batch_size=8",
    "task.max_records={train: 16, validation: 8, test: 8}",
]
TINY = [
    "training.epochs=1",
    "search.scheduler=null",
    "search.num_samples=1",
    "search.max_concurrent_trials=1",
    "method.kind=lora",
    "search.space={}",
]


@pytest.mark.slow
@pytest.mark.ray
def test_the_sweep_translates_once_and_a_later_sweep_reuses_every_split(tmp_path):
    config = load_experiment(QUICKSTART, [f"storage_path={tmp_path}", *MT, *TINY])
    assert config.translates and config.task.mt_dir == tmp_path / "mt"
    plan = subprocess.run(
        [
            sys.executable,
            "-m",
            "flare_ray.tune",
            str(QUICKSTART),
            "--dry-run",
            "--set",
            f"storage_path={tmp_path}",
            *[x for o in MT + TINY for x in ("--set", o)],
        ],
        env=environment(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert "# translation: 1 language(s) x 3 role(s) (train, validation, test), tiny:m2m_100" in plan.stdout
    assert "cached 0 / to make 3" in plan.stdout

    first = run_tune(tmp_path, *MT, *TINY)
    assert (
        "translation: 1 language(s) x 3 role(s) (train, validation, test), tiny:m2m_100: cached 0 / made 3"
        in first.stdout
    )
    assert "streaming_executor" not in first.stdout + first.stderr  # Ray Data's progress goes to the log file
    for role in ("train", "validation", "test"):
        assert mt_split_path(tmp_path / "mt", "nusax", "jav", role).is_file()
    client, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and children

    def artifact(name):
        return json.loads(Path(client.download_artifacts(parents[0].info.run_id, name, str(tmp_path))).read_text())

    made = artifact("translation/translation.json")
    assert {k: v["cached"] for k, v in made["splits"].items()} == {
        "jav/train": False,
        "jav/validation": False,
        "jav/test": False,
    }
    assert all(v["segments"] and v["records"] for v in made["splits"].values())
    provenance = artifact("data_provenance.json")
    assert all(provenance["jav"][role]["as_in_paper"] for role in ("train", "validation", "test"))
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "mt").rglob("*") if p.is_file()}

    second = run_tune(tmp_path, *MT, *TINY, "name=again")
    assert "cached 3 / made 0" in second.stdout  # nothing translated: no segment, no model loaded
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "mt").rglob("*") if p.is_file()} == stamps


def test_translations_made_elsewhere_are_read_as_they_are_and_remote_storage_needs_a_folder(tmp_path):
    elsewhere = load_experiment(QUICKSTART, [f"storage_path={tmp_path}", *MT, f"task.mt_dir={tmp_path / 'theirs'}"])
    assert not elsewhere.translates and elsewhere.task.mt_dir == tmp_path / "theirs"
    named = load_experiment(QUICKSTART, [f"storage_path={tmp_path}", *MT, f"task.mt_dir={tmp_path / 'mt'}"])
    assert not named.translates  # named by the config, even where the sweep would put its own: read as it is
    assert not load_experiment(QUICKSTART, [f"storage_path={tmp_path}"]).translates  # nothing read from MT
    with pytest.raises(ExperimentConfigError, match=r"task.mt_dir.*storage_path is remote"):
        load_experiment(QUICKSTART, ["storage_path=s3://bucket/sweeps", *MT])


def test_the_stage_translates_the_training_set_back_where_xmixup_runs(tmp_path):
    from flare_ray.search.translation import plan_line, translate_configs

    def configs(*overrides):
        config = load_experiment(QUICKSTART, [f"storage_path={tmp_path}", *MT, *TINY, *overrides])
        return config, translate_configs(config)

    config, jobs = configs("search.grid={method.kind: [lora, xmixup]}", "search.seeds=[0]", "search.num_samples=null")
    assert jobs and all(job.back_translate for job in jobs)
    assert "the training set back into English for X-Mixup" in plan_line(config)
    _, jobs = configs()  # LoRA alone
    assert not any(job.back_translate for job in jobs)
    _, jobs = configs("method.kind=xmixup", "task.splits={validation: mt, test: mt}")  # the training set is gold
    assert not any(job.back_translate for job in jobs)

"""``flare-ray reproduce``'s pieces on a real sqlite MLflow store, without Ray: a sweep's parent run as
``start_parent_run`` records it and a trial's child run with the tags the callback gives it; what differs from the
records (commit, versions, data, hardware), the one-trial sweep built from a child run, the recorded stage-1
folder reused only while its files match their hashes, and the comparison of the scores (equal to 4 decimals, or
the differing rows). The reproduced trial equal to its original: tests/e2e/test_reproduce.py."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
from safetensors.numpy import save_file

from flare_ray.cli.reproduce import main as reproduce_main
from flare_ray.digests import write_manifest
from flare_ray.experiment import load_experiment
from flare_ray.search import reproduce as rp
from flare_ray.tasks import get_task
from flare_ray.tracking import mlflow_runs
from tests.helpers import REPO

QUICKSTART = REPO / "search_spaces" / "quickstart.yaml"

CHILD_TAGS = {
    mlflow_runs.TRIAL_TAG: "abcde_00004",
    mlflow_runs.LANGUAGE_TAG: "jav",
    mlflow_runs.SEED_TAG: "1",
    mlflow_runs.CONFIGURATION_TAG: json.dumps({"method.flare.fusion": "add", "method.kind": "flare"}),
}


@pytest.fixture
def sweep(tmp_path):
    """A quickstart sweep's records: (client, its config, the parent run id, a trial's child run id)."""
    config = load_experiment(QUICKSTART, [f"storage_path={tmp_path}"])
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    provenance = {lang: get_task(config.task.task_config(lang)).provenance() for lang in config.task.languages}
    parent = mlflow_runs.start_parent_run(
        client,
        "quickstart",
        "quickstart",
        config.model_dump(mode="json"),
        "space",
        provenance,
        resume=False,
        artifact_location=mlflow_runs.artifact_location(uri, str(tmp_path)),
    )
    experiment_id = client.get_run(parent).info.experiment_id
    child = client.create_run(
        experiment_id, run_name="jav flare fusion=add seed=1", tags={**CHILD_TAGS, MLFLOW_PARENT_RUN_ID: parent}
    )
    return client, config, parent, child.info.run_id


def test_a_run_recorded_here_and_now_differs_in_nothing_and_each_change_is_named(sweep):
    client, config, parent, child = sweep
    recorded = rp.read_recorded(client, child)
    assert recorded.trial and recorded.parent_id == parent and recorded.sweep == "quickstart"
    assert (recorded.language, recorded.seed) == ("jav", 1)
    assert recorded.configuration == {"method.flare.fusion": "add", "method.kind": "flare"}
    current = rp.read_current(config)
    assert rp.differences(recorded, current) == []

    changed = dataclasses.replace(
        current,
        commit="0" * 40,
        versions={**current.versions, "torch": "9.9.9"},
        provenance={"jav": {**current.provenance["jav"], "data": "/elsewhere"}},
        hardware={**current.hardware, "gpus": ["NVIDIA H100 80GB HBM3"], "cpu_count": 64},
    )
    found = {d.what: (d.recorded, d.now) for d in rp.differences(recorded, changed)}
    assert set(found) == {"commit", "version.torch", "data.jav", "hardware.gpus", "hardware.cpu_count"}
    assert found["version.torch"] == (current.versions["torch"], "9.9.9")
    assert found["hardware.gpus"] == ([], ["NVIDIA H100 80GB HBM3"])
    assert rp.hardware_differs(rp.differences(recorded, changed))

    recorded.hardware = None  # a sweep of an earlier version recorded none: said, not assumed the same
    assert [d.what for d in rp.differences(recorded, current)] == ["hardware"]


def test_a_child_run_becomes_a_one_trial_sweep_of_its_values_seed_and_language(sweep, tmp_path):
    client, _, _, child = sweep
    recorded = rp.read_recorded(client, child)
    name = rp.reproduction_name(client, recorded, str(tmp_path))
    assert name == f"quickstart-reproduce-{child[:8]}"
    config = rp.reproduction_config(recorded, name, client.tracking_uri, stage1=None)
    assert config.name == name and config.task.languages == ["jav"]
    assert (config.method.kind, config.method.flare.fusion, config.training.seed) == ("flare", "add", 1)
    search = config.search
    assert (search.grid, search.space, search.ablation, search.seeds, search.num_samples) == ({}, {}, None, None, 1)
    assert config.tracking.experiment_name == "quickstart"  # beside the original, not in an experiment of its own
    assert config.tracking.tracking_uri == client.tracking_uri
    assert config.model.stage1 == "auto" and config.report.baseline is None

    experiment_id = client.get_experiment_by_name("quickstart").experiment_id
    client.create_run(experiment_id, tags={mlflow_runs.SWEEP_TAG: name})  # reproduced once already
    assert rp.reproduction_name(client, recorded, str(tmp_path)) == f"{name}-2"


def test_the_recorded_stage1_folder_is_reused_only_while_its_files_match_their_hashes(sweep, tmp_path):
    client, _, parent, child = sweep
    folder = tmp_path / "stage1" / "95923bf03eeb216d"
    client.set_tag(parent, "stage1.path", str(folder))
    client.set_tag(parent, "stage1.fingerprint", folder.name)
    recorded = rp.read_recorded(client, child)
    assert rp.stage1_reuse(recorded)[0] is None  # not there: model.stage1 auto trains it

    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"r": 16}')
    (folder / "stage1.json").write_text('{"best_epoch": 4}')
    save_file({"lora_A": np.zeros((2, 2), dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    write_manifest(folder)
    path, line = rp.stage1_reuse(recorded)
    assert path == str(folder) and "reusing" in line
    assert str(rp.reproduction_config(recorded, "q", client.tracking_uri, path).model.stage1) == str(folder)

    (folder / "adapter_config.json").write_text('{"r": 8}')  # changed since: its hash no longer matches
    path, line = rp.stage1_reuse(recorded)
    assert path is None and "adapter_config.json" in line and "trains it again" in line


def _curve_run(client, experiment_id, values: list[float], test: float, seed: str = "1"):
    run = client.create_run(experiment_id, tags={**CHILD_TAGS, mlflow_runs.SEED_TAG: seed})
    for epoch, value in enumerate(values, start=1):
        client.log_metric(run.info.run_id, "validation/macro_f1", value, step=epoch)
    client.log_metric(run.info.run_id, "test/macro_f1", test)
    client.log_metric(run.info.run_id, "time/steps", 3.0 + len(values))  # not compared: wall time differs
    return client.get_run(run.info.run_id)


def test_the_comparison_is_equal_to_4_decimals_or_shows_the_scores_that_differ(sweep):
    client, _, parent, _ = sweep
    experiment_id = client.get_run(parent).info.experiment_id
    original = _curve_run(client, experiment_id, [61.25, 64.50001, 63.0], 60.125)
    same = _curve_run(client, experiment_id, [61.25, 64.50004, 63.0], 60.125)
    comparison = rp.compare(client, [original], [same])
    assert comparison.equal and len(comparison.rows) == 4  # 3 epochs and the test score, not time/*
    assert [(r.metric, r.epoch) for r in comparison.rows] == [
        ("validation/macro_f1", 1),
        ("validation/macro_f1", 2),
        ("validation/macro_f1", 3),
        ("test/macro_f1", -1),
    ]

    other = _curve_run(client, experiment_id, [61.25, 64.6, 63.0], 60.0)
    comparison = rp.compare(client, [original], [other])
    assert not comparison.equal
    lines = comparison.table(only_different=True).splitlines()
    assert lines[0].split() == ["trial", "metric", "epoch", "original", "reproduced", "Δ"]
    assert [line.split()[-4:] for line in lines[1:]] == [
        ["2", "64.5000", "64.6000", "+0.1000"],
        ["test", "60.1250", "60.0000", "-0.1250"],
    ]

    seeds = [_curve_run(client, experiment_id, [1.0], 1.0, seed=s) for s in ("0", "1")]  # a sweep: paired by seed
    comparison = rp.compare(client, seeds, seeds[1:])
    assert not comparison.equal and len(comparison.missing) == 1


def test_a_missing_run_id_is_a_clear_error_and_the_dry_run_runs_nothing(sweep, capsys):
    client, _, _, child = sweep
    with pytest.raises(rp.RunNotReproducible, match="no run 'f00' in the MLflow store"):
        rp.read_recorded(client, "f00")
    assert reproduce_main(["f00", "--tracking-uri", client.tracking_uri]) == 2
    assert "error: no run 'f00'" in capsys.readouterr().err

    assert reproduce_main([child, "--tracking-uri", client.tracking_uri, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"reproducing trial {child} (jav, seed 1) of sweep 'quickstart'" in out
    assert "the same commit, packages, data and hardware as recorded" in out
    assert "1 run(s) of the fixed config" in out
    assert len(client.search_runs([client.get_run(child).info.experiment_id])) == 2  # nothing ran

"""One config object from the YAML to the Train workers: paths resolved once, at load, and URIs kept. (On its
way through a real Ray Train run to the workers, validated once per trial: ``e2e/test_config_journey.py``.)"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.numpy import save_file

from flare_ray.experiment import ExperimentConfig, load_experiment
from flare_ray.storage import join, local_folder
from flare_ray.tasks import DATA_DIR
from tests.helpers import QUICKSTART


def test_paths_are_resolved_once_at_load_and_uris_are_kept(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stage1-adapter").mkdir()
    (tmp_path / "stage1-adapter" / "adapter_config.json").write_text("{}")
    save_file({}, str(tmp_path / "stage1-adapter" / "adapter_model.safetensors"))
    for language in ("javanese", "english"):  # the data the quickstart's splits read (checked at load)
        shutil.copytree(DATA_DIR / "nusax" / "sentiment" / language, tmp_path / "data" / "sentiment" / language)
    config = load_experiment(QUICKSTART, ["storage_path=runs/rel", "task.data_dir=data", "model.stage1=stage1-adapter"])
    assert config.storage_path == str(tmp_path / "runs" / "rel")
    assert config.task.data_dir == tmp_path / "data" and config.model.stage1 == tmp_path / "stage1-adapter"
    for uri in ("file:///srv/sweeps/x", "s3://bucket/sweeps", "gs://bucket/a/b"):
        kept = load_experiment(QUICKSTART, [f"storage_path={uri}"])
        assert kept.storage_path == uri and join(kept.storage_path, "train") == f"{uri}/train"
    assert local_folder("file:///srv/sweeps/x") == Path("/srv/sweeps/x") and local_folder("s3://bucket/x") is None
    again = ExperimentConfig.model_validate(config.model_dump(mode="json"))  # idempotent: the checkpoint's JSON record
    assert again.storage_path == config.storage_path and again.task.data_dir == config.task.data_dir

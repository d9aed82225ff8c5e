"""What is checked before Ray starts beyond the schema (flare_ray.experiment.checks): the model folder or the
hub cache, the stage-1 folder, and fusion_layers against the model's blocks. Each problem is an error like
any other config error (the file, the line, the key and what was expected), from load_experiment and from
``python -m flare_ray.tune ... --dry-run`` (exit status 2, the message on stderr)."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from safetensors.numpy import save_file

from flare_ray.cli.tune import main
from flare_ray.experiment import ExperimentConfigError, load_experiment
from tests.helpers import TINY_EXPERIMENT, write_experiment
from tests.hub_cache import SHIPPED_MODELS, fake_hub_cache


@pytest.fixture(autouse=True)
def hub_cache(tmp_path, monkeypatch):
    """A local hub cache with the shipped YAMLs' models (config.json only); the hub offline, as in the suite."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(fake_hub_cache(tmp_path / "cache")))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.chdir(tmp_path)


def model(name_or_path: str, extra: str = "") -> str:
    return TINY_EXPERIMENT.replace('"tiny:xlm-roberta"', json.dumps(name_or_path)) + extra


def errors(path: Path, capsys, overrides: tuple[str, ...] = ()) -> list[str]:
    """The error of load_experiment and the stderr of the dry run, which must agree."""
    with pytest.raises(ExperimentConfigError) as info:
        load_experiment(path, overrides)
    assert main([str(path), *(f"--set={o}" for o in overrides), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {info.value}\n"
    return [str(info.value), captured.err]


def loads(path: Path, capsys, overrides: tuple[str, ...] = ()):
    config = load_experiment(path, overrides)
    assert main([str(path), *(f"--set={o}" for o in overrides), "--dry-run"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    return config


def local_model(folder: Path, layers: int) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "xlm-roberta", "num_hidden_layers": layers}))
    return folder


# -- model.name_or_path ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    ["/no/such/models/xlmr", "./models/xlmr", "../xlmr", "~/no-such-flare-model", "models/xlmr/large", "not a hub id"],
)
def test_a_local_model_folder_that_does_not_exist(value, tmp_path, capsys):
    path = write_experiment(tmp_path, model(value))
    relative = "" if value.startswith(("/", "~")) else f" (relative to {tmp_path})"
    for message in errors(path, capsys):
        assert f"{path}: invalid experiment config (1 problem)" in message
        assert (
            f"line 3, model.name_or_path: {value!r} does not exist{relative}; expected a model folder, a Hugging "
            "Face hub id ('org/name') or tiny:<arch>"
        ) in message


def test_an_override_naming_a_missing_folder_is_named(tmp_path, capsys):
    path = write_experiment(tmp_path, TINY_EXPERIMENT)
    for message in errors(path, capsys, ("model.name_or_path=/no/such/model",)):
        assert (
            "model.name_or_path (from --set model.name_or_path=/no/such/model): '/no/such/model' does not exist"
        ) in message


def test_a_local_folder_is_local_even_when_it_looks_like_a_hub_id(tmp_path, capsys):
    local_model(tmp_path / "FacebookAI" / "xlm-roberta-base", layers=12)  # not in the hub cache, and offline
    config = loads(write_experiment(tmp_path, model("FacebookAI/xlm-roberta-base")), capsys)
    assert config.model.name_or_path == str(tmp_path / "FacebookAI" / "xlm-roberta-base")


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_a_hub_model_missing_from_the_cache_while_offline(switch, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv(switch, "1")
    path = write_experiment(tmp_path, model("some-org/not-downloaded"))
    for message in errors(path, capsys):
        assert f"{path}: invalid experiment config (1 problem)" in message
        assert (
            f"line 3, model.name_or_path: hub model 'some-org/not-downloaded' is not in the local Hugging Face "
            f"cache and the hub is offline ({switch}=1); expected a cached model: download it first "
            "(`hf download some-org/not-downloaded`)"
        ) in message


def test_a_hub_model_in_the_cache_offline_or_any_online(tmp_path, capsys, monkeypatch):
    assert "FacebookAI/xlm-roberta-large" in SHIPPED_MODELS  # in the cache
    loads(write_experiment(tmp_path, model("FacebookAI/xlm-roberta-large")), capsys)
    monkeypatch.delenv("HF_HUB_OFFLINE")  # online: a hub id is accepted as it is (nothing is downloaded)
    loads(write_experiment(tmp_path, model("some-org/not-downloaded")), capsys)


def test_a_hub_mt_model_missing_from_the_cache_while_offline(tmp_path, capsys):
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT + "method: {kind: flare_mt, flare: {mt_encoder: some-org/no-mt-model}}\n"
    )
    for message in errors(path, capsys):
        assert (
            "line 6, method.flare.mt_encoder: hub model 'some-org/no-mt-model' is not in the local Hugging Face "
            "cache and the hub is offline (HF_HUB_OFFLINE=1); expected a cached model"
        ) in message
    loads(
        write_experiment(tmp_path, TINY_EXPERIMENT + "method: {kind: flare_mt, flare: {mt_encoder: tiny:m2m_100}}\n"),
        capsys,
    )


def test_a_searched_model_is_checked_for_every_value(tmp_path, capsys):
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT + "search:\n  grid:\n    model.name_or_path: ['tiny:xlm-roberta', /no/such/model]\n"
    )
    for message in errors(path, capsys):
        assert (
            "line 8, search.grid.model.name_or_path[1]: '/no/such/model' does not exist; expected a model folder"
        ) in message


# -- model.stage1 ----------------------------------------------------------------------------------
def test_a_stage1_folder_that_does_not_exist(tmp_path, capsys):
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT.replace("  name_or_path", "  stage1: stage1-adapter\n  name_or_path")
    )
    for message in errors(path, capsys):
        assert f"{path}: invalid experiment config (1 problem)" in message
        assert (
            f"line 3, model.stage1: '{tmp_path / 'stage1-adapter'}' is no folder (it does not exist); expected "
            "a stage-1 adapter folder (written by `python -m flare_ray.stage1`), 'auto' or null"
        ) in message


def test_a_stage1_folder_without_its_adapter(tmp_path, capsys):
    (tmp_path / "stage1-adapter").mkdir()
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT.replace("  name_or_path", "  stage1: stage1-adapter\n  name_or_path")
    )
    for message in errors(path, capsys):
        assert (
            f"line 3, model.stage1: '{tmp_path / 'stage1-adapter'}' holds no stage-1 adapter; expected a "
            "folder with adapter_config.json (written by `python -m flare_ray.stage1`), 'auto' or null"
        ) in message
    (tmp_path / "stage1-adapter" / "adapter_config.json").write_text("{}")
    save_file({}, str(tmp_path / "stage1-adapter" / "adapter_model.safetensors"))  # its weights (only these load)
    assert loads(path, capsys).model.stage1 == tmp_path / "stage1-adapter"


# -- method.flare.fusion_layers --------------------------------------------------------------------
def test_fusion_layers_beyond_a_tiny_model(tmp_path, capsys):
    path = write_experiment(tmp_path, TINY_EXPERIMENT + "method: {flare: {fusion_layers: [0, 4]}}\n")
    for message in errors(path, capsys):
        assert f"{path}: invalid experiment config (1 problem)" in message
        assert (
            "line 6, method.flare.fusion_layers: [0, 4]: 4 is outside the 4 blocks of tiny:xlm-roberta (the tiny "
            "xlm-roberta model); expected block indices 0 to 3 (negative ones count from the last), ranges of "
            "them such as '0-3', or one of ['all', 'lower_half', 'upper_half']"
        ) in message
    loads(write_experiment(tmp_path, TINY_EXPERIMENT + "method: {flare: {fusion_layers: [0, -4, '1-3']}}\n"), capsys)


def test_fusion_layers_beyond_a_local_model_read_from_its_config_json(tmp_path, capsys):
    folder = local_model(tmp_path / "xlmr-6", layers=6)
    path = write_experiment(tmp_path, model(str(folder), "method: {flare: {fusion_layers: '0-7'}}\n"))
    for message in errors(path, capsys):
        assert (
            f"line 6, method.flare.fusion_layers: '0-7': '0-7' is outside the 6 blocks of {folder} "
            f"(num_hidden_layers in {folder / 'config.json'}); expected block indices 0 to 5"
        ) in message


def test_fusion_layers_beyond_a_cached_hub_model(tmp_path, capsys):
    path = write_experiment(
        tmp_path, model("FacebookAI/xlm-roberta-large", "method: {flare: {fusion_layers: [23, 24]}}\n")
    )
    for message in errors(path, capsys):
        assert (
            "line 6, method.flare.fusion_layers: [23, 24]: 24 is outside the 24 blocks of FacebookAI/xlm-roberta-large"
        ) in message
        assert "(num_hidden_layers in " in message and "expected block indices 0 to 23" in message


def test_fusion_layers_of_a_hub_model_online_and_not_cached_are_not_checked(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    loads(
        write_experiment(tmp_path, model("some-org/not-downloaded", "method: {flare: {fusion_layers: [100]}}\n")),
        capsys,
    )


def test_fusion_layers_in_the_search_space_every_value(tmp_path, capsys):
    path = write_experiment(
        tmp_path,
        TINY_EXPERIMENT
        + textwrap.dedent("""\
        search:
          space:
            method.flare.fusion_layers:
              type: categorical
              values: [all, [2, 9], lower_half]
        """),
    )
    for message in errors(path, capsys):
        assert (
            "line 10, search.space.method.flare.fusion_layers.values[1]: [2, 9]: 9 is outside the 4 blocks of "
            "tiny:xlm-roberta (the tiny xlm-roberta model); expected block indices 0 to 3"
        ) in message


def test_fusion_layers_in_the_grid_every_value(tmp_path, capsys):
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT + "search:\n  grid:\n    method.flare.fusion_layers: [all, '0-5', upper_half]\n"
    )
    for message in errors(path, capsys):
        assert (
            "line 8, search.grid.method.flare.fusion_layers[1]: '0-5': '0-5' is outside the 4 blocks of "
            "tiny:xlm-roberta"
        ) in message


def test_fusion_layers_are_not_checked_for_methods_without_fusion(tmp_path, capsys):
    loads(write_experiment(tmp_path, TINY_EXPERIMENT + "method: {kind: lora, flare: {fusion_layers: [9]}}\n"), capsys)


# -- credentials ------------------------------------------------------------------------------------
def test_a_uri_with_a_password_is_refused_and_the_password_never_shown(tmp_path, capsys):
    path = write_experiment(
        tmp_path,
        TINY_EXPERIMENT + "tracking: {tracking_uri: 'http://bob:hunter2@mlflow.internal:5000'}\n"
        "storage_path: 's3://key:secret@bucket/x'\n",
    )
    for message in errors(path, capsys):
        assert "invalid experiment config (2 problems)" in message
        assert "line 6, tracking.tracking_uri: 'http://bob:***@mlflow.internal:5000' holds a password" in message
        assert "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD" in message
        assert "'s3://key:***@bucket/x' holds a password" in message
        assert "hunter2" not in message and "secret@" not in message


def test_what_is_logged_to_mlflow_has_every_uri_password_blanked(tmp_path):
    from mlflow.tracking import MlflowClient

    from flare_ray.secrets import redact
    from flare_ray.tracking.mlflow_runs import log_params

    assert (
        redact("see http://bob:hunter2@host:5000/x and s3://:k@b") == "see http://bob:***@host:5000/x and s3://:***@b"
    )
    assert redact("http://host:5000/a@b") == "http://host:5000/a@b"  # no user info: unchanged
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("e", artifact_location=str(tmp_path / "a")))
    log_params(client, run.info.run_id, {"tracking": {"tracking_uri": "http://bob:hunter2@host"}, "lr": 0.1})
    assert client.get_run(run.info.run_id).data.params == {"tracking.tracking_uri": "http://bob:***@host", "lr": "0.1"}

"""Everything a trial would fail on 20-50 s in, once per trial, is an error before Ray starts (issue 28, item 8):
the task's data (a missing ``data_dir``, a CSV without its label column or with an unknown label, ``max_records``
of 0), a stage-1 folder without safetensors weights, a tracking URI that answers 404, an unsupported or blank
``storage_path``, a reversed ``fusion_layers`` range, and a worker this machine can never hold. Each names the
file and the key, from ``load_experiment`` and from ``python -m flare_ray.tune ... --dry-run`` alike (exit status
2, the message on stderr), and Ray is never started; a GPU this machine does not show is only a warning."""

from __future__ import annotations

import csv
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from safetensors.numpy import save_file

from flare_ray.cli.tune import main
from flare_ray.experiment import ExperimentConfigError, load_experiment
from flare_ray.tasks import DATA_DIR
from tests.helpers import QUICKSTART, TINY_EXPERIMENT, free_port, refuse_ray, write_experiment


@pytest.fixture(autouse=True)
def before_ray(tmp_path, monkeypatch):
    """Ray cannot start here (a test that reaches ``ray.init`` fails), and the sweep would start a local Ray:
    no RAY_ADDRESS, no cluster address left by ``ray start``."""
    refuse_ray(tmp_path, monkeypatch)
    monkeypatch.chdir(tmp_path)


def errors(path: Path, capsys) -> str:
    """The error of load_experiment, which the dry run prints (exit status 2, nothing on stdout)."""
    with pytest.raises(ExperimentConfigError) as info:
        load_experiment(path)
    assert main([str(path), "--dry-run"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == f"error: {info.value}\n"
    assert f"{path}: invalid experiment config (1 problem)" in str(info.value)
    return str(info.value)


def cli_error(argv: list[str], capsys) -> str:
    """The error of ``python -m flare_ray.tune`` (exit status 2, nothing on stdout), with and without --dry-run."""
    assert main([*argv, "--dry-run"]) == 2
    dry = capsys.readouterr()
    assert main(argv) == 2  # the real run stops at the same place: before Ray (ray.init raises here)
    real = capsys.readouterr()
    assert dry.out == real.out == "" and dry.err == real.err and dry.err.startswith("error: ")
    return dry.err


def nusax_copy(root: Path) -> Path:
    """The Javanese and English NusaX files in a data_dir of their own."""
    for language in ("javanese", "english"):
        shutil.copytree(DATA_DIR / "nusax" / "sentiment" / language, root / "sentiment" / language)
    return root


def rewrite(path: Path, edit) -> None:
    """Rewrite a CSV: ``edit(rows)`` -> rows (the header first)."""
    with open(path, encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f))
    with open(path, "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(edit(rows))


# -- the task's data -------------------------------------------------------------------------------------
def test_a_data_dir_that_does_not_exist(tmp_path, capsys):
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT.replace("languages: [jav]", "languages: [jav], data_dir: no-such-data")
    )
    message = errors(path, capsys)
    assert (
        f"line 4, task.data_dir: '{tmp_path / 'no-such-data'}' is no folder (it does not exist); expected a local "
        "copy of the nusax data, or no data_dir for the vendored copy"
    ) in message


def test_the_data_dir_the_sweeps_translation_stage_reads(tmp_path, capsys):
    every_role_mt = "splits: {train: mt, validation: mt, test: mt}"
    task = f"task: {{name: nusax, languages: [jav], data_dir: no-such-data, {every_role_mt}}}"
    path = write_experiment(
        tmp_path,
        TINY_EXPERIMENT.replace("task: {name: nusax, languages: [jav]}", task) + "translation: {model: tiny:m2m_100}\n",
    )
    assert f"line 4, task.data_dir: '{tmp_path / 'no-such-data'}' is no folder" in errors(path, capsys)
    made_elsewhere = task.replace("data_dir:", "mt_dir: theirs, data_dir:")  # read as they are: no data_dir read
    load_experiment(
        write_experiment(tmp_path, TINY_EXPERIMENT.replace("task: {name: nusax, languages: [jav]}", made_elsewhere))
    )


def test_a_csv_without_the_label_column(tmp_path, capsys):
    data = nusax_copy(tmp_path / "data")
    train = data / "sentiment" / "javanese" / "train.csv"
    rewrite(train, lambda rows: [[value for value, name in zip(row, rows[0]) if name != "label"] for row in rows])
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT.replace("languages: [jav]", f"languages: [jav], data_dir: {data}")
    )
    message = errors(path, capsys)
    assert f"line 4, task.data_dir: {train}: missing columns ['label']; expected id, text, label" in message


def test_a_csv_with_an_unknown_label(tmp_path, capsys):
    data = nusax_copy(tmp_path / "data")
    test = data / "sentiment" / "javanese" / "test.csv"

    def happy(rows):
        rows[5][rows[0].index("label")] = "happy"  # the fifth record: line 6
        return rows

    rewrite(test, happy)
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT.replace("languages: [jav]", f"languages: [jav], data_dir: {data}")
    )
    message = errors(path, capsys)
    assert (
        f"line 4, task.data_dir: {test}: line 6: label 'happy' is not one of ['positive', 'neutral', 'negative']"
    ) in message


def test_a_missing_split_file(tmp_path, capsys):
    data = nusax_copy(tmp_path / "data")
    (data / "sentiment" / "javanese" / "valid.csv").unlink()
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT.replace("languages: [jav]", f"languages: [jav], data_dir: {data}")
    )
    message = errors(path, capsys)
    assert f"task.data_dir: {data / 'sentiment' / 'javanese' / 'valid.csv'}: file not found" in message
    load_experiment(QUICKSTART)  # the vendored copy: every split there


@pytest.mark.parametrize("limit", [0, -3])
def test_max_records_of_no_rows(limit, tmp_path, capsys):
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT.replace("languages: [jav]", f"languages: [jav], max_records: {{train: {limit}}}")
    )
    message = errors(path, capsys)
    assert (
        f"line 4, task.max_records.train: {limit} rows would leave the train split empty (scikit-learn refuses an "
        "empty one); expected at least 1, or no max_records.train for all of its rows"
    ) in message


# -- the stage-1 folder -----------------------------------------------------------------------------------
def test_a_stage1_folder_with_pickled_weights_only(tmp_path, capsys):
    folder = tmp_path / "stage1-adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text("{}")
    (folder / "adapter_model.bin").write_bytes(b"a pickle")
    path = write_experiment(
        tmp_path, TINY_EXPERIMENT.replace("  name_or_path", "  stage1: stage1-adapter\n  name_or_path")
    )
    message = errors(path, capsys)
    assert (
        f"line 3, model.stage1: '{folder}' holds no adapter_model.safetensors (only adapter_model.bin, a pickle, "
        "which is never loaded: convert it); expected a stage-1 adapter folder with adapter_config.json and "
        "adapter_model.safetensors"
    ) in message
    save_file({}, str(folder / "adapter_model.safetensors"))
    assert load_experiment(path).model.stage1 == folder


# -- storage_path ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, problem",
    [
        ("ftp://files.example.org/sweeps", "'ftp://files.example.org/sweeps': ftp:// is not a storage a sweep can use"),
        ("' '", "' ' is blank"),
        ("''", "'' is blank"),
        ("s3://", "'s3://' names no bucket"),
    ],
)
def test_a_storage_path_no_sweep_can_use(value, problem, tmp_path, capsys):
    message = errors(write_experiment(tmp_path, TINY_EXPERIMENT + f"storage_path: {value}\n"), capsys)
    assert f"line 6, storage_path: {problem}; expected a local folder or a URI (file://, s3://, gs://)" in message


# -- fusion_layers -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, problem",
    [
        ("'3-1'", "'3-1' is a reversed range; expected the lower block first, e.g. '1-3'"),
        ("[0, 10000]", "[0, 10000]: 10000 is outside the 4 blocks of tiny:xlm-roberta (the tiny xlm-roberta model)"),
    ],
)
def test_fusion_layers_name_the_models_own_blocks(spec, problem, tmp_path, capsys):
    message = errors(
        write_experiment(tmp_path, TINY_EXPERIMENT + f"method: {{flare: {{fusion_layers: {spec}}}}}\n"), capsys
    )
    assert f"line 6, method.flare.fusion_layers: {problem}" in message
    assert "10000 blocks" not in message


def test_a_range_is_reversed_for_any_model_or_only_for_the_models_depth():
    from flare_ray.fusion import resolve_layers

    assert resolve_layers("-1-3", 4) == [3]  # the last block to block 3: one block of four
    with pytest.raises(ValueError, match=r"'-1-3' is a reversed range \(blocks 23 to 3 of 24\); .* e.g. '3-23'"):
        resolve_layers("-1-3", 24)
    assert resolve_layers("-1-3", None) == []  # unknown depth: either may hold
    with pytest.raises(ValueError, match=r"'-1--3' is a reversed range; expected the lower block first, e.g. '-3--1'"):
        resolve_layers("-1--3", None)


# -- the tracking server -----------------------------------------------------------------------------------
@pytest.fixture
def http_server():
    """``http_server(status)``: the URL of a local HTTP server answering every GET with ``status``."""
    servers = []

    def serve(status: int) -> str:
        class Answer(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def test_a_tracking_uri_that_answers_404_is_no_mlflow_server(tmp_path, capsys, http_server):
    url = http_server(404)
    path = write_experiment(tmp_path, TINY_EXPERIMENT + f"tracking: {{tracking_uri: '{url}'}}\n")
    message = cli_error([str(path)], capsys)
    assert (
        f"error: no MLflow tracking server at {url}: it answers HTTP 404 (Not Found) at /health, which an MLflow "
        "tracking server answers with 200 (a wrong host, port or path?); expected the URI of a running "
        "`mlflow server`"
    ) in message


def test_a_tracking_server_that_does_not_answer_is_a_warning_in_the_dry_run_only(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: maybe the dry run is away from the cluster
    path = write_experiment(tmp_path, TINY_EXPERIMENT + f"tracking: {{tracking_uri: '{url}'}}\n")
    assert main([str(path), "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# experiment ")
    assert captured.err.startswith(f"warning: the MLflow tracking server {url} does not answer (")
    assert main([str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"error: the MLflow tracking server {url} does not answer (")


@pytest.mark.parametrize("status", [200, 401])
def test_a_tracking_server_that_answers_or_asks_for_credentials_passes(status, tmp_path, capsys, http_server):
    path = write_experiment(tmp_path, TINY_EXPERIMENT + f"tracking: {{tracking_uri: '{http_server(status)}'}}\n")
    assert main([str(path), "--dry-run"]) == 0, capsys.readouterr().err


# -- what this machine holds -------------------------------------------------------------------------------
def test_more_cpus_than_this_machine_has_without_a_cluster(capsys, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    message = cli_error([str(QUICKSTART), "--set", "scaling.cpus_per_worker=64"], capsys)
    assert (
        f"error: {QUICKSTART}: a trial's worker asks for 64 CPU, 0 GPU (scaling.cpus_per_worker, "
        "scaling.gpus_per_worker / use_gpu), but this machine has 2 CPU: no trial could ever start on this machine "
        "(the sweep starts a local Ray: no RAY_ADDRESS names a cluster to join); expected "
        "scaling.cpus_per_worker of at most 2, or RAY_ADDRESS"
    ) in message
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")  # a cluster's nodes are asked once Ray has joined it
    assert main([str(QUICKSTART), "--set", "scaling.cpus_per_worker=64", "--dry-run"]) == 0
    assert capsys.readouterr().err == ""


def test_a_cluster_left_by_ray_start_is_joined_not_checked_against_this_machine(tmp_path, capsys, monkeypatch):
    from flare_ray.search.plan import starts_a_local_ray

    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert starts_a_local_ray()
    (tmp_path / "ray-tmp" / "ray").mkdir(parents=True)
    (tmp_path / "ray-tmp" / "ray" / "ray_current_cluster").write_text("127.0.0.1:6379")  # what `ray start` leaves
    assert not starts_a_local_ray()
    assert main([str(QUICKSTART), "--set", "scaling.cpus_per_worker=64", "--dry-run"]) == 0
    monkeypatch.setenv("RAY_ADDRESS", "local")  # then ray.init starts a local Ray whatever the file says
    assert starts_a_local_ray()


def test_a_gpu_this_machine_does_not_show_is_a_warning(capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert main([str(QUICKSTART), "--set", "scaling.use_gpu=true", "--dry-run"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("# experiment ")
    assert captured.err == (
        f"warning: {QUICKSTART}: a trial's worker asks for 0.5 CPU, 1 GPU (scaling.cpus_per_worker, "
        "scaling.gpus_per_worker / use_gpu), but this machine shows 0 GPU (CUDA_VISIBLE_DEVICES, /dev/nvidia*; the "
        "sweep starts a local Ray: no RAY_ADDRESS names a cluster to join): no trial starts here unless Ray finds "
        "more (--set scaling.use_gpu=false trains on the CPU)\n"
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert main([str(QUICKSTART), "--set", "scaling.use_gpu=true", "--dry-run"]) == 0
    assert capsys.readouterr().err == ""

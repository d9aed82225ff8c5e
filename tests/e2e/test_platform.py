"""The platform end to end: real Ray (local, and a head node under `ray job submit`), real Optuna,
real ASHA, a real MLflow store; the tiny offline XLM-R on vendored NusaX.

Each sweep runs `python -m flare_ray.tune` in its own process, as a user would. Slow (a few
minutes in all): `-m "not slow"` skips them; CI runs them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.helpers import QUICKSTART, REPO
from tests.sweeps import SHORT, environment, mlflow_runs, run_tune, tune_command

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SEQUENTIAL = ["search.max_concurrent_trials=1"]  # deterministic ASHA decisions and trial order


def best_of(client, run, metric: str, mode: str) -> float:
    history = [m.value for m in client.get_metric_history(run.info.run_id, metric)]
    return max(history) if mode == "max" else min(history)


def test_sweep_records_every_trial_and_selects_the_best(tmp_path, monkeypatch):
    samples = 5
    notified = tmp_path / "notified.txt"  # the notification at its end ($FLARE_RAY_NOTIFY, as --notify)
    monkeypatch.setenv("FLARE_RAY_NOTIFY", f'(echo "$FLARE_RAY_STATUS"; cat) > {notified}')
    done = run_tune(
        tmp_path, f"search.num_samples={samples}", "search.metric=validation/loss", "search.mode=min", *SEQUENTIAL
    )
    assert "Best trials of sweep 'quickstart'" in done.stdout and "mlflow ui --backend-store-uri" in done.stdout

    client, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and len(children) == samples
    (parent,) = parents
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    assert {"config.json", "search_space.txt", "data_provenance.json"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id)
    }
    assert parent.data.tags["version.ray"] and parent.data.tags["git_commit"]
    # artifacts live with the sweep's storage, not in ./mlruns of wherever the command ran
    assert client.get_experiment_by_name("quickstart").artifact_location == (tmp_path / "mlartifacts").as_uri()

    # Optuna proposed every trial: its study holds exactly the trials MLflow recorded, with their values.
    from ray.tune.search.optuna import OptunaSearch

    (state,) = (tmp_path / "quickstart-jav").glob("searcher-state-*.pkl")
    searcher = OptunaSearch()
    searcher.restore(str(state))
    proposed = sorted(
        (t.params["method.flare.fusion"], round(t.params["training.learning_rate"], 12))
        for t in searcher._ot_study.trials
    )
    recorded = sorted(
        (c.data.params["method.flare.fusion"], round(float(c.data.params["training.learning_rate"]), 12))
        for c in children
    )
    assert proposed == recorded and len(proposed) == samples
    for c in children:
        assert c.data.params["method.flare.fusion"] in {"add", "mul", "add_relu", "cross_attention"}
        assert 1e-3 <= float(c.data.params["training.learning_rate"]) <= 5e-2
        assert c.data.params["language"] == "jav" and c.info.status == "FINISHED"
        curve = client.get_metric_history(c.info.run_id, "validation/loss")
        assert [m.step for m in curve] == list(range(1, len(curve) + 1))  # one point per epoch

    # ASHA stopped at least one trial early; finished ones have test scores and their adapter.
    epochs = {
        c.info.run_id: max(m.step for m in client.get_metric_history(c.info.run_id, "validation/loss"))
        for c in children
    }
    assert min(epochs.values()) < 3 <= max(epochs.values()), epochs
    for c in children:
        finished = epochs[c.info.run_id] == 3
        assert ("test/macro_f1" in c.data.metrics) == finished
        artifacts = {a.path for a in client.list_artifacts(c.info.run_id, "adapter")}
        assert {
            "adapter/adapter_model.safetensors",
            "adapter/flare_config.json",
            "adapter/trial_config.json",
        } <= artifacts

    # The selected trial is the one with the best MT-validation score among the recorded metrics.
    best = min(children, key=lambda c: best_of(client, c, "validation/loss", "min"))
    assert parent.data.tags["best.jav.run_id"] == best.info.run_id
    assert parent.data.metrics["best.jav.validation"] == pytest.approx(best_of(client, best, "validation/loss", "min"))
    # each child run carries the selection's own value (ASHA-stopped trials too): sorting by it agrees
    for c in children:
        assert c.data.metrics["best/validation/loss"] == best_of(client, c, "validation/loss", "min")
        assert c.data.tags["mlflow.runName"].startswith("jav fusion=")  # what it varies, as the console says
    assert min(children, key=lambda c: c.data.metrics["best/validation/loss"]).info.run_id == best.info.run_id
    (version,) = client.search_model_versions("name='quickstart-nusax-jav'")
    assert version.run_id == best.info.run_id and version.source.endswith("/adapter")
    usage = f"flare-ray predict quickstart-nusax-jav/{version.version} --input rows.csv --output predicted.csv"
    assert f"{usage} --tracking-uri sqlite:///{tmp_path / 'mlflow.db'}" in version.description
    assert version.tags["flare_ray.language"] == "jav" and version.tags["method"] == "flare"

    # The report: one row (a search, no grid) printed at the end, and Optuna's plots of the searched keys.
    report = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert {
        "report/report.html",
        "report/optuna-quickstart-jav-parallel.png",
        "report/optuna-quickstart-jav-importance.png",
    } <= report
    assert "| flare " in done.stdout and "Report: quickstart" in done.stdout

    # Where each trial's time went (up to its last result, ASHA-stopped ones too): its named phases add up to its
    # wall time within 5 %; the parent run holds the sums, the slots' idle time and the goodput; so does the console.
    from flare_ray.training.timing import PHASES

    named = lambda figures: sum(figures[f"time/{phase}"] for phase in PHASES)  # noqa: E731
    for c in children:  # (these trials last about a second: within 0.25 s where that is more than 5 %)
        figures = c.data.metrics
        assert named(figures) == pytest.approx(figures["time/wall"], rel=0.05, abs=0.25)
        assert min(figures["time/train_steps"], figures["time/validation"], figures["time/setup"]) > 0
        assert len(client.get_metric_history(c.info.run_id, "time/wall")) == 1  # once per run, not a curve
        for key in figures:  # every metric holds one value per step (the final result repeats no epoch's)
            steps = [m.step for m in client.get_metric_history(c.info.run_id, key)]
            assert len(steps) == len(set(steps)), (c.info.run_name, key, steps)
    sums = parent.data.metrics
    assert named(sums) == pytest.approx(sums["time/wall"], rel=0.05)
    assert sums["time/trials"] == samples and sums["sweep/slots"] == 1
    for key in [*(f"time/{phase}" for phase in PHASES), "time/wall"]:
        assert sums[key] == pytest.approx(sum(c.data.metrics[key] for c in children)), key
    assert sums["sweep/goodput"] == pytest.approx(sums["time/train_steps"] / sums["time/wall"])
    assert 0 <= sums["sweep/slot_idle_share"] < 1
    assert re.search(r"^time: 5 trials, [\d.]+ trial-min: .*steps \d+ %", done.stdout, flags=re.MULTILINE)
    assert re.search(r"^slots: 1 × .*, idle \d+ %; goodput \d+ % ", done.stdout, flags=re.MULTILINE)
    assert notified.read_text().startswith("finished\nBest trials of sweep 'quickstart'")


def test_interrupted_sweep_resumes_without_duplicate_runs(tmp_path):
    """Two languages searched at once, interrupted (SIGINT) once the first trial reported its first epoch;
    --resume finishes both."""
    samples, languages = 2, ["jav", "sun"]
    # 8 epochs: long enough that the interrupt lands while trials still run (tiny trials in reused processes
    # take a second or two each)
    overrides = [
        f"search.num_samples={samples}",
        f"task.languages=[{', '.join(languages)}]",
        *SHORT,
        *SEQUENTIAL,
        "training.epochs=8",
    ]
    process = subprocess.Popen(
        tune_command(tmp_path, *overrides),
        env=environment(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 600
    try:
        # Interrupt once a trial has reported an epoch (read from Tune's result files: opening the sqlite
        # store while the sweep creates it would race its schema migration). Not later: with reused trial
        # processes the other trials follow within seconds.
        while time.time() < deadline:
            results = tmp_path.glob("quickstart-*/run_trial_*/result.json")
            if any(r.read_text().strip() for r in results):
                break
            assert process.poll() is None, process.stdout.read()[-3000:]
            time.sleep(0.5)
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 130, output[-3000:]
    _, parents, children = mlflow_runs(tmp_path)
    assert parents[0].info.status == "KILLED"  # stopped part-way: not every trial finished
    assert sum(c.info.status == "FINISHED" for c in children) < samples * len(languages)
    # A trial that started after the search's last saved state has a run Tune does not know on resume (it
    # happens when the interrupt lands between a save and a trial's first result): made here so that it is
    # always there, it is deleted when the search resumes.
    client, search = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}"), children[0].data.tags["flare_ray.search"]
    unsaved = client.create_run(
        parents[0].info.experiment_id,
        tags={
            "mlflow.parentRunId": parents[0].info.run_id,
            "flare_ray.search": search,
            "flare_ray.trial_id": "unsaved",
            "flare_ray.language": children[0].data.tags["flare_ray.language"],
        },
    ).info.run_id

    run_tune(tmp_path, *overrides, resume=True)
    assert client.get_run(unsaved).info.lifecycle_stage == "deleted"
    client, parents, children = mlflow_runs(tmp_path)
    trial_ids = [c.data.tags["flare_ray.trial_id"] for c in children]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(trial_ids) == len(set(trial_ids)) == samples * len(languages)
    assert sorted(c.data.tags["flare_ray.language"] for c in children) == sorted(languages * samples)
    assert all(c.info.status == "FINISHED" and "test/macro_f1" in c.data.metrics for c in children)


def test_ray_job_submit_against_a_local_head(tmp_path):
    ray = shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"
    env = {**environment(), "RAY_AUTH_MODE": "token"}
    subprocess.run(
        [ray, "start", "--head", "--num-cpus=2", "--disable-usage-stats"],
        env=env,
        check=True,
        capture_output=True,
        timeout=180,
        cwd=REPO,
    )
    try:
        command = [
            ray,
            "job",
            "submit",
            "--address",
            "http://127.0.0.1:8265",
            "--",
            *tune_command(tmp_path, "search.num_samples=2", *SHORT),
        ]
        done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "succeeded" in done.stdout + done.stderr
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)
    _, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED" and len(children) == 2


def test_stage1_by_hand_is_an_adapter_that_trials_merge(tmp_path):
    from safetensors.torch import load_file

    from flare_ray.experiment import load_experiment
    from flare_ray.models.loading import resolve_name_or_path
    from flare_ray.tasks import get_task
    from flare_ray.training.setup import load_base

    output = tmp_path / "stage1"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flare_ray.stage1",
            str(QUICKSTART),
            "--output",
            str(output),
            "--set",
            f"storage_path={tmp_path}",
            "--set",
            "training.epochs=1",
        ],
        env=environment(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    info = json.loads((output / "stage1.json").read_text())
    assert info["best_epoch"] == 1 and "macro_f1" in info["english_validation"] and info["lora"]["r"] == 8
    adapter = load_file(output / "adapter_model.safetensors")
    assert any("lora_A" in k for k in adapter) and any("classifier" in k for k in adapter)  # LoRA and the head

    config = load_experiment(QUICKSTART, [f"storage_path={tmp_path}", f"model.stage1={output}"])
    task = get_task(config.task.task_config("jav"))
    merged = load_base(config, task).model.state_dict()
    original = load_file(Path(resolve_name_or_path("tiny:xlm-roberta")) / "model.safetensors")
    query = "roberta.encoder.layer.0.attention.self.query.weight"
    assert not any("lora" in k for k in merged) and not torch_equal(merged[query], original[query])
    (head,) = [k for k in adapter if k.endswith("classifier.out_proj.weight")]
    assert torch_equal(merged["classifier.out_proj.weight"], adapter[head])


def test_stage1_auto_trains_once_and_every_later_sweep_reuses_it(tmp_path):
    auto = [
        "model.stage1=auto",
        "stage1.training={epochs: 1, batch_size: 16, max_length: 64}",
        "search.num_samples=1",
        *SHORT,
    ]
    first = run_tune(tmp_path, *auto)
    second = run_tune(tmp_path, *auto, "name=quickstart-again", "tracking.experiment_name=quickstart")
    assert "stage 1: trained" in first.stdout and "stage 1: reused" in second.stdout
    (folder,) = [p for p in (tmp_path / "stage1").iterdir() if not p.name.startswith(".")]
    client, parents, children = mlflow_runs(tmp_path)
    assert len(parents) == 2 and len(children) == 2
    assert {p.data.tags["stage1.path"] for p in parents} == {str(folder)}
    assert sorted(p.data.tags["stage1.reused"] for p in parents) == ["false", "true"]
    assert all("stage1.english_validation.macro_f1" in p.data.metrics for p in parents)
    for child in children:  # every trial started from that stage 1
        trial = client.download_artifacts(
            child.info.run_id, "adapter/trial_config.json", str(tmp_path / child.info.run_id)
        )
        assert json.loads(Path(trial).read_text())["experiment"]["model"]["stage1"] == str(folder)


def test_a_file_uri_storage_path_holds_the_whole_sweep(tmp_path):
    store = tmp_path / "uri-store"
    uri = store.as_uri()
    auto = ["model.stage1=auto", "stage1.training={epochs: 1, batch_size: 16, max_length: 64}", "search.num_samples=1"]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flare_ray.tune",
            str(QUICKSTART),
            "--set",
            f"storage_path={uri}",
            *[x for o in [*auto, *SHORT] for x in ("--set", o)],
        ],
        env=environment(),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    assert list(tmp_path.iterdir()) == [store]  # nothing under the working directory (no "file:" folder)
    assert (store / "quickstart-jav").is_dir()  # Tune's experiment folder
    records = list(store.glob("quickstart-jav/run_trial_*/checkpoint_*/trial_config.json"))  # the trial's adapters
    # (a single-worker trial trains in its Tune trial's process: its checkpoints are Tune's, in its trial folder)
    assert records and all(json.loads(r.read_text())["experiment"]["storage_path"] == uri for r in records)
    (stage1,) = [p for p in (store / "stage1").iterdir() if not p.name.startswith(".")]
    client, parents, children = mlflow_runs(store)
    assert client.get_experiment_by_name("quickstart").artifact_location == (store / "mlartifacts").as_uri()
    assert parents[0].data.tags["stage1.path"] == str(stage1) and len(children) == 1
    assert {"adapter/adapter_model.safetensors"} <= {
        a.path for a in client.list_artifacts(children[0].info.run_id, "adapter")
    }
    assert list((store / "mlartifacts").rglob("adapter_model.safetensors"))
    assert Path(children[0].data.tags["best_checkpoint"]).is_relative_to(store / "quickstart-jav")


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_a_trial_killed_from_outside_is_named_with_its_log_and_the_command_exits(tmp_path):
    """SIGKILL to a running trial's process (as the OOM killer would): the console names the trial, what Ray
    reported and its log file; a failed trial is no candidate for selection, so this sweep (no other trial)
    fails as a whole, and the command exits non-zero at once."""
    overrides = ["search.space={}", "search.num_samples=1", "search.scheduler=null", "training.epochs=40"]
    process = subprocess.Popen(
        tune_command(tmp_path, *overrides),
        env=environment(),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 300
    try:
        while time.time() < deadline:  # the trial has reported an epoch: its log names its process
            logs = list(tmp_path.glob("logs/quickstart-jav/*.log"))
            if (
                logs
                and list(tmp_path.glob("quickstart-jav/run_trial_*/result.json"))
                and any(r.read_text().strip() for r in tmp_path.glob("quickstart-jav/run_trial_*/result.json"))
            ):
                break
            assert process.poll() is None, process.stdout.read()[-3000:]
            time.sleep(1)
        (log,) = logs
        pid = int(re.search(r"^--- .* pid (\d+) on ", log.read_text(), flags=re.MULTILINE).group(1))
        os.kill(pid, signal.SIGKILL)
        killed = time.time()
        output, _ = process.communicate(timeout=120)
        took = time.time() - killed
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    print(f"killed trial process {pid}; the command exited {process.returncode} after {took:.1f} s")
    assert process.returncode == 1 and took < 30, output[-3000:]
    (failed,) = [line for line in output.splitlines() if "FAILED:" in line]
    print(failed)
    trial = log.stem.removeprefix("run_trial_")
    assert trial in failed and "jav" in failed and ("died" in failed.lower() or "killed" in failed.lower()), failed
    assert f"its log: {log}" in output
    assert "no trial of jav reported validation/macro_f1" in output and "1 of 1 trials of the sweep failed" in output

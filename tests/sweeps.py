"""The e2e tests' sweeps and trials, run as a user runs them: ``python -m flare_ray.tune`` on the small FLARE
search (``QUICKSTART``) in its own process, alone or joining a Ray cluster, its MLflow records read back; and one
trial through Ray Train beside a minimal peft loop."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import torch
from mlflow.tracking import MlflowClient

from flare_ray.experiment import ExperimentConfig
from flare_ray.training.inputs import TrialInput
from tests.helpers import QUICKSTART, REPO

# -- a sweep in its own process ------------------------------------------------------------------------------------
SHORT = ["training.epochs=2", "search.scheduler=null"]  # where ASHA is not under test


def tune_command(storage: Path, *overrides: str, resume: bool = False) -> list[str]:
    command = [sys.executable, "-m", "flare_ray.tune", str(QUICKSTART), "--set", f"storage_path={storage}"]
    for override in overrides:
        command += ["--set", override]
    return command + (["--resume"] if resume else [])


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"RAY_ADDRESS", "MLFLOW_TRACKING_URI"}}
    env.update(RAY_TRAIN_V2_ENABLED="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    return env


def run_tune(storage: Path, *overrides: str, resume: bool = False) -> subprocess.CompletedProcess:
    done = subprocess.run(
        tune_command(storage, *overrides, resume=resume),
        env=environment(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return done


def mlflow_runs(storage: Path):
    client = MlflowClient(f"sqlite:///{storage / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if "flare_ray.sweep" in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return client, parents, children


# -- a sweep joining a Ray cluster (conftest.py's ray_cluster) --------------------------------------------------------
ONE_TRIAL = ["search.space={}", "search.num_samples=1", "search.scheduler=null", "training.epochs=3"]
ON_A_WORKER_NODE = ["scaling.cpus_per_worker=1.5"]  # one worker per worker node, none on the head


def cluster_env(cluster, faults: dict | None = None) -> dict[str, str]:
    env = {**environment(), "RAY_ADDRESS": cluster.address}
    if faults:
        env["FLARE_RAY_FAULTS"] = json.dumps(faults)
    return env


def start(storage: Path, cluster, *overrides: str, faults: dict | None = None, resume: bool = False):
    return subprocess.Popen(
        tune_command(storage, *overrides, resume=resume),
        env=cluster_env(cluster, faults),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return output


def worker_nodes(log: Path) -> list[tuple[int, str]]:
    """(rank, Ray node id) of every worker start the trial's log records."""
    return [
        (int(r), node) for r, node in re.findall(r"^worker rank (\d+) of \d+ on Ray node (\w+)", log.read_text(), re.M)
    ]


# -- one trial through Ray Train, and a minimal peft loop to compare it with -----------------------------------------
SETTINGS = {
    "epochs": 6,
    "batch_size": 16,
    "max_length": 64,
    "learning_rate": 1e-2,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "max_grad_norm": None,
    "weight_decay": 0.0,
    "seed": 3,
}
LORA = {"r": 8, "alpha": 16, "dropout": 0.1}


def _recording_loop(train_loop_config):
    """The real trial loop (its inputs under ``"trial"``), with every report also written to the file under
    ``"record"``."""
    from flare_ray.training import loop

    report = loop.session.report

    def recording(metrics, checkpoint=None, **kwargs):
        with open(train_loop_config["record"], "a") as f:
            f.write(json.dumps(metrics) + "\n")
        report(metrics, checkpoint=checkpoint, **kwargs)

    loop.session.report = recording
    loop.train_loop_per_worker(train_loop_config["trial"])


def run_trial(experiment: ExperimentConfig, tmp_path: Path, name: str) -> list[dict]:
    """One trial through Ray Train, as a sweep runs it; its reports, epoch by epoch (the final one last)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    record = tmp_path / f"{name}.jsonl"
    TorchTrainer(
        _recording_loop,
        train_loop_config={"trial": TrialInput(experiment, "jav"), "record": str(record)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=name, storage_path=str(tmp_path / "ray")),
    ).fit()
    return [json.loads(line) for line in record.read_text().splitlines()]


def minimal_peft_loop(
    experiment: ExperimentConfig, modules_to_save: list[str] | None = None
) -> tuple[list[float], float]:
    """A plain peft LoRA loop: transformers + peft + torch only. Per-epoch training losses, final validation macro-F1.
    ``modules_to_save``: what the loop trains beside the LoRA and peft's classifier (a missing pooler)."""
    from peft import LoraConfig, TaskType, get_peft_model
    from sklearn.metrics import f1_score
    from torch.utils.data import DataLoader, DistributedSampler
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed

    from flare_ray.models.loading import (
        resolve_name_or_path,  # only to find the tiny model's folder
    )
    from flare_ray.tasks import get_task  # only to read the same records

    t, labels = experiment.training, ["positive", "neutral", "negative"]
    task = get_task(experiment.task.task_config("jav"))
    train, validation = list(task.load("train")), list(task.load("validation"))
    path = resolve_name_or_path(experiment.model.name_or_path)

    set_seed(t.seed)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=3)
    model = get_peft_model(
        model,
        LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=LORA["dropout"],
            task_type=TaskType.SEQ_CLS,
            modules_to_save=modules_to_save,
        ),
    )
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=t.learning_rate, weight_decay=0.0)

    def encode(rows):
        return tok(
            [r["target_text"] for r in rows],
            truncation=True,
            max_length=t.max_length,
            padding=True,
            return_tensors="pt",
        )

    sampler = DistributedSampler(train, num_replicas=1, rank=0, shuffle=True, seed=t.seed)
    loader = DataLoader(
        train,
        batch_size=t.batch_size,
        sampler=sampler,
        collate_fn=lambda rows: rows,
        generator=torch.Generator().manual_seed(t.seed),
    )
    losses = []
    for epoch in range(1, t.epochs + 1):
        sampler.set_epoch(epoch)
        model.train()
        epoch_losses = []
        for rows in loader:
            out = model(**encode(rows), labels=torch.tensor([labels.index(r["label"]) for r in rows]))
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            epoch_losses.append(out.loss.item())
        losses.append(sum(epoch_losses) / len(epoch_losses))
    model.eval()
    with torch.no_grad():
        predicted = [labels[i] for i in model(**encode(validation)).logits.argmax(-1).tolist()]
    return losses, 100 * f1_score([r["label"] for r in validation], predicted, labels=labels, average="macro")

"""Per-trial scaling from the YAML, through ``python -m flare_ray.tune``: QLoRA (4-bit NF4, peft's k-bit
preparation, gradient checkpointing) with bf16 autocast on a decoder, and DeepSpeed ZeRO-3 on two workers of
two nodes (gloo) whose adapter-only checkpoint is gathered whole. On CPUs: the GPU runs of the same configs
are ``benchmarks/gpu/check.sh``. The two-node test comes last: while its cluster runs, a local ``ray.init()``
would join it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import QUICKSTART, REPO
from tests.sweeps import ON_A_WORKER_NODE, environment, finish, mlflow_runs, run_tune, start, worker_nodes

pytestmark = [pytest.mark.slow, pytest.mark.ray]

GPU_CHECK = REPO / "benchmarks" / "gpu" / "qlora-flare.yaml"
ON_CPU = [
    "scaling.use_gpu=false",
    "scaling.cpus_per_worker=1",
    "training.epochs=1",
    "training.max_length=48",
    "task.max_records={train: 48, validation: 16, test: 16}",
    "training.gradient_checkpointing=true",
]


def adapter_shapes(checkpoint: Path) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in load_file(checkpoint / "adapter_model.safetensors").items()}


def test_qlora_lora_and_flare_trials_through_the_sweep_report_throughput(tmp_path):
    """The GPU check's YAML (4-bit NF4 base in bf16, bf16 autocast, LoRA and FLARE as a grid) on the tiny Llama."""
    import subprocess
    import sys

    command = [
        sys.executable,
        "-m",
        "flare_ray.tune",
        str(GPU_CHECK),
        "--set",
        f"storage_path={tmp_path}",
        "--set",
        f"tracking.tracking_uri=sqlite:///{tmp_path / 'mlflow.db'}",
        *[x for o in ON_CPU for x in ("--set", o)],
    ]
    done = subprocess.run(command, env=environment(), cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("gpu-qlora-flare")
    children = [r for r in client.search_runs([experiment.experiment_id]) if "mlflow.parentRunId" in r.data.tags]
    assert sorted(c.data.tags["flare_ray.method"] for c in children) == ["flare", "lora"]
    for child in children:
        assert child.info.status == "FINISHED" and child.data.params["model.quantization"] == "4bit"
        assert child.data.params["training.precision"] == "bf16"
        assert child.data.metrics["train/tokens_per_second"] > 0 and child.data.metrics["train/peak_memory_gb"] > 0
        trial = json.loads(
            Path(
                client.download_artifacts(
                    child.info.run_id, "adapter/trial_config.json", str(tmp_path / child.info.run_id)
                )
            ).read_text()
        )
        assert trial["experiment"]["model"]["quantization"] == "4bit"


def test_zero2_from_a_file_through_the_sweep(tmp_path):
    """`scaling.deepspeed` as a file (cluster/deepspeed_zero2.json), one worker on this machine's Ray."""
    run_tune(
        tmp_path,
        "search.space={}",
        "search.num_samples=1",
        "search.scheduler=null",
        "training.epochs=1",
        f"scaling.deepspeed={REPO / 'cluster' / 'deepspeed_zero2.json'}",
        "scaling.cpus_per_worker=1",
    )
    _, _, (child,) = mlflow_runs(tmp_path)
    assert child.info.status == "FINISHED" and "test/macro_f1" in child.data.metrics
    assert child.data.params["scaling.deepspeed.zero_optimization.stage"] == "2"  # the file, read into the config


def test_deepspeed_zero3_on_two_nodes_checkpoints_the_whole_adapter(tmp_path, two_worker_nodes):
    overrides = [
        "search.space={}",
        "search.num_samples=1",
        "search.scheduler=null",
        "training.epochs=2",
        "scaling.num_workers=2",
        "scaling.deepspeed={zero_optimization: {stage: 3}}",
        *ON_A_WORKER_NODE,
    ]
    process = start(tmp_path, two_worker_nodes, *overrides)
    output = finish(process)
    assert process.returncode == 0, output[-3000:]
    (log,) = tmp_path.glob("logs/quickstart-jav/*.log")
    assert len({node for _, node in worker_nodes(log)}) == 2
    _, _, (child,) = mlflow_runs(tmp_path)
    assert child.info.status == "FINISHED" and "test/macro_f1" in child.data.metrics
    checkpoint = Path(child.data.tags["best_checkpoint"])
    saved = adapter_shapes(checkpoint)

    # The same adapter built without DeepSpeed: every tensor is there with its whole shape (not a ZeRO shard)
    from flare_ray.experiment import load_experiment
    from flare_ray.tasks import get_task
    from flare_ray.training.adapter import build_adapter
    from flare_ray.training.setup import load_base

    config = load_experiment(QUICKSTART, [f"storage_path={tmp_path}"])
    base = load_base(config, get_task(config.task.task_config("jav")))
    fresh = tmp_path / "fresh"
    build_adapter(base.model, config.method).save_pretrained(fresh)
    assert saved == adapter_shapes(fresh) and all(0 not in shape for shape in saved.values())
    trained = load_file(checkpoint / "adapter_model.safetensors")
    assert any(torch.count_nonzero(v) > 0 for k, v in trained.items() if "lora_B" in k)  # trained, not the zero init

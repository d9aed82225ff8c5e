"""The cluster configs in cluster/: valid for Ray's autoscaler and KubeRay, GPU workers scale from zero."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"


def test_aws_launcher_config_passes_rays_own_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    config = prepare_config(raw)
    validate_config(config)  # Ray's JSON schema for `ray up`
    types = config["available_node_types"]
    assert config["head_node_type"] == "head"
    gpu_types = [n for n in types if n != "head"]
    assert gpu_types and all(types[n]["min_workers"] == 0 < types[n]["max_workers"] for n in gpu_types)
    setup = raw["setup_commands"]
    torch_step = next(i for i, c in enumerate(setup) if "torch==" in c)
    project_step = next(i for i, c in enumerate(setup) if "-e ~/flare_ray" in c)
    assert torch_step < project_step, "the pinned torch build must be installed before the project"
    assert any("--autoscaling-config" in c for c in raw["head_start_ray_commands"])


def test_kuberay_cluster_autoscales_gpu_workers_from_zero():
    spec = yaml.safe_load((CLUSTER / "kuberay.yaml").read_text())
    assert spec["kind"] == "RayCluster" and spec["spec"]["enableInTreeAutoscaling"] is True
    assert spec["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"
    for group in spec["spec"]["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1


def test_deepspeed_config_is_accepted_by_the_experiment_schema(tmp_path):
    from flare_ray.training.config import ScalingSpec

    path = CLUSTER / "deepspeed_zero2.json"
    scaling = ScalingSpec(num_workers=2, deepspeed=str(path))
    assert scaling.deepspeed == json.loads(path.read_text())
    assert scaling.deepspeed["zero_optimization"]["stage"] == 2

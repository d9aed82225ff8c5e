"""The configs in cluster/, each checked by the validator of the tool that reads it:

* Ray cluster-launcher configs (``aws-gpu.yaml``, ``gcp-gpu.yaml``): Ray's own schema for ``ray up``;
* KubeRay manifests (``kuberay-cluster.yaml``, ``kuberay-job.yaml``): the RayCluster and RayJob CRDs' OpenAPI
  schemas of KubeRay v1.7.0 (vendored in ``tests/schemas``), strict: an unknown field is an error, as with
  ``kubectl apply --validate=strict``;
* Kubernetes manifests (``mlflow.yaml``): the Kubernetes OpenAPI schemas of ``kubernetes-validate``, strict;
* the compose file (``docker-compose.yaml``): the Compose Specification's JSON schema (vendored);
* the DeepSpeed config: the experiment schema.

And what every one of them must say: GPU workers from zero, token auth, the trial drivers' resource on the
head, the dashboard and MLflow on loopback or behind auth, no credential in any file.
"""

from __future__ import annotations

import copy
import gzip
import json
import re

import jsonschema
import pytest
import yaml

from tests.helpers import REPO, TESTS

CLUSTER = REPO / "cluster"
SCHEMAS = TESTS / "schemas"
LAUNCHER = ["aws-gpu.yaml", "gcp-gpu.yaml"]
KUBERAY = {"kuberay-cluster.yaml": "raycluster", "kuberay-job.yaml": "rayjob"}
KUBERNETES = ["mlflow.yaml"]
KUBERNETES_VERSION = "1.33.0"
DRIVER_RESOURCE = "trial_driver"


def launcher_errors(raw: dict) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(raw)))  # Ray's JSON schema for `ray up`


def crd_validator(kind: str) -> jsonschema.Draft7Validator:
    """The CRD's structural schema, strict: every object that lists its properties (and does not keep unknown
    fields) refuses others, as the API server's strict field validation does."""
    schema = json.loads(gzip.open(SCHEMAS / f"kuberay-v1.7.0-{kind}.json.gz").read())["openAPIV3Schema"]

    def strict(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    strict(schema)
    schema["properties"]["metadata"] = {"type": "object"}
    return jsonschema.Draft7Validator(schema)


def crd_errors(doc: dict, kind: str) -> list[str]:
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message[:200]}" for e in crd_validator(kind).iter_errors(doc)]


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


@pytest.mark.parametrize("name", LAUNCHER)
def test_launcher_config_passes_rays_own_schema(name):
    raw = yaml.safe_load((CLUSTER / name).read_text())
    launcher_errors(raw)
    types = raw["available_node_types"]
    assert raw["head_node_type"] == "head" and raw["idle_timeout_minutes"] > 0
    gpu_types = [n for n in types if n != "head"]
    assert gpu_types and all(types[n]["min_workers"] == 0 < types[n]["max_workers"] for n in gpu_types)
    assert types["head"]["resources"].get(DRIVER_RESOURCE, 0) >= 1  # the trial drivers' place
    assert all(DRIVER_RESOURCE not in types[n]["resources"] for n in gpu_types)
    setup = raw["setup_commands"]
    torch_step = next(i for i, c in enumerate(setup) if "torch==" in c)
    project_step = next(i for i, c in enumerate(setup) if "-e ~/flare_ray" in c)
    assert torch_step < project_step, "the pinned torch build must be installed before the project"
    head, workers = " ".join(raw["head_start_ray_commands"]), " ".join(raw["worker_start_ray_commands"])
    assert "--autoscaling-config" in head and "--dashboard-host=127.0.0.1" in head
    assert "RAY_AUTH_MODE=token" in head and "RAY_AUTH_MODE=token" in workers
    assert raw["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"  # the user's token, no file here

    broken = copy.deepcopy(raw)  # the schema is no rubber stamp: a misspelt key fails it
    broken["idle_timeout_minute"] = broken.pop("idle_timeout_minutes")
    with pytest.raises(Exception, match="idle_timeout_minute"):
        launcher_errors(broken)


@pytest.mark.parametrize("name", list(KUBERAY))
def test_kuberay_manifest_passes_the_crd_schema(name):
    (doc,) = documents(name)
    assert doc["apiVersion"] == "ray.io/v1" and crd_errors(doc, KUBERAY[name]) == []
    broken = copy.deepcopy(doc)
    broken["spec"]["entrypointt" if doc["kind"] == "RayJob" else "enableInTreeAutoscalling"] = True
    assert crd_errors(broken, KUBERAY[name]), "the strict CRD schema must refuse an unknown field"


def test_kuberay_cluster_autoscales_gpu_workers_from_zero_with_token_auth():
    (spec,) = documents("kuberay-cluster.yaml")
    spec = spec["spec"]
    assert spec["enableInTreeAutoscaling"] is True and spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0" and head.get("serviceType", "ClusterIP") == "ClusterIP"
    assert json.loads(json.loads(head["rayStartParams"]["resources"]))[DRIVER_RESOURCE] >= 1
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] == 0 < group["maxReplicas"]
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) >= 1
        assert DRIVER_RESOURCE not in group["rayStartParams"].get("resources", "")


def test_kuberay_job_runs_the_rank_sweep_on_that_cluster_with_a_deadline():
    (job,) = documents("kuberay-job.yaml")
    (cluster,) = documents("kuberay-cluster.yaml")
    spec = job["spec"]
    assert spec["entrypoint"].startswith("python -m flare_ray.tune search_spaces/rank.yaml")
    assert (CLUSTER.parent / "search_spaces" / "rank.yaml").is_file()
    assert spec["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert spec["activeDeadlineSeconds"] > 0


@pytest.mark.parametrize("name", KUBERNETES)
def test_kubernetes_manifest_passes_the_kubernetes_openapi_schema(name):
    import kubernetes_validate

    docs = documents(name)
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    assert {d["kind"] for d in docs} >= {"Deployment", "Service", "StatefulSet"}
    broken = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["enviroment"] = []
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_mlflow_on_kubernetes_uses_postgres_object_storage_and_basic_auth_from_the_secret():
    docs = {(d["kind"], d["metadata"]["name"]): d for d in documents("mlflow.yaml")}
    assert all(d["spec"].get("type", "ClusterIP") == "ClusterIP" for (kind, _), d in docs.items() if kind == "Service")
    (container,) = docs["Deployment", "mlflow"]["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["value"].startswith("postgresql://")
    assert env["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith(("s3://", "gs://"))
    for secret in ("PGPASSWORD", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[secret]["valueFrom"]["secretKeyRef"]["name"] == "flare-ray-mlflow" and "value" not in env[secret]
    assert "Secret" not in {kind for kind, _ in docs}  # made by hand (cluster/README.md), never shipped


def test_compose_file_passes_the_compose_specification():
    schema = json.loads((SCHEMAS / "compose-spec.json").read_text())
    doc = yaml.safe_load((CLUSTER / "docker-compose.yaml").read_text())
    validator = jsonschema.Draft7Validator(schema)
    assert list(validator.iter_errors(doc)) == []
    assert set(doc["services"]) == {"postgres", "mlflow"}
    mlflow = doc["services"]["mlflow"]
    assert mlflow["build"] == "./mlflow" and (CLUSTER / "mlflow" / "Dockerfile").is_file()
    assert mlflow["ports"] == ["127.0.0.1:5000:5000"]  # the host's loopback only
    assert mlflow["environment"]["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://")
    broken = copy.deepcopy(doc)
    broken["services"]["mlflow"]["port"] = broken["services"]["mlflow"].pop("ports")
    assert list(validator.iter_errors(broken)), "the compose schema must refuse an unknown key"


def test_deepspeed_config_is_accepted_by_the_experiment_schema():
    from flare_ray.experiment.training import ScalingSpec

    path = CLUSTER / "deepspeed_zero2.json"
    scaling = ScalingSpec(num_workers=2, deepspeed=str(path))
    assert scaling.deepspeed == json.loads(path.read_text())
    assert scaling.deepspeed["zero_optimization"]["stage"] == 2


# --- secure by default -------------------------------------------------------------------------------------

CONFIG_FILES = sorted(
    p
    for p in CLUSTER.rglob("*")
    if p.is_file() and p.suffix in {".yaml", ".yml", ".json", ".ini", ".sh", ".sql"} or p.name == "Dockerfile"
)
# What a credential looks like: a key or variable named like one given a literal value (not a reference to
# the environment, a secret or a file), a URI with a password, a cloud key.
SECRET_NAME = re.compile(r"(password|passwd|secret|token|access_key|api_key|private_key)", re.I)
ASSIGNMENT = re.compile(r"""^\s*(export\s+)?(?P<key>[A-Za-z_][\w.-]*)\s*[:=]\s*(?P<value>[^#\n]*)""", re.M)
REFERENCE = re.compile(r"^(\$\{?\w+|\$\(|~/|/home/|\{\}|$)")
CLOUD_KEY = re.compile(r"(AKIA[0-9A-Z]{16}|-----BEGIN [A-Z ]*PRIVATE KEY-----|\"private_key_id\")")


def _literal(key, value) -> bool:
    return (
        bool(SECRET_NAME.search(str(key)))
        and isinstance(value, (str, int))
        and not isinstance(value, bool)
        and not REFERENCE.match(str(value).strip().strip("'\""))
    )


def _structured(node, found: list[str]) -> None:
    """Keys named like a credential with a literal value, and Kubernetes' ``{name: X, value: literal}``."""
    if isinstance(node, dict):
        if "name" in node and "value" in node and _literal(node["name"], node["value"]):
            found.append(f"{node['name']}={node['value']}")
        for key, value in node.items():
            if _literal(key, value):
                found.append(f"{key}: {value}")
            _structured(value, found)
    elif isinstance(node, list):
        for value in node:
            _structured(value, found)


def credentials_in(text: str, structured: bool = False) -> list[str]:
    from flare_ray.secrets import has_password

    found = [m.group(0) for m in CLOUD_KEY.finditer(text)]
    found += [line for line in text.splitlines() if has_password(line)]
    if structured:  # YAML and JSON: every value, wherever it sits (lists of env entries, flow mappings)
        for doc in yaml.safe_load_all(text):
            _structured(doc, found)
    else:  # ini, shell, Dockerfile: assignments
        found += [m.group(0).strip() for m in ASSIGNMENT.finditer(text) if _literal(m["key"], m["value"].strip())]
    return found


def test_no_file_in_cluster_holds_a_credential():
    assert len(CONFIG_FILES) >= 10
    found = {
        p.name: hits
        for p in CONFIG_FILES
        if (hits := credentials_in(p.read_text(), structured=p.suffix in {".yaml", ".yml", ".json"}))
    }
    assert found == {}
    # the scan finds what it looks for
    assert credentials_in("MLFLOW_TRACKING_PASSWORD: hunter2", structured=True)
    assert credentials_in("env:\n  - {name: PGPASSWORD, value: hunter2}", structured=True)
    assert credentials_in("export MLFLOW_TRACKING_PASSWORD=hunter2")
    assert credentials_in("admin_password = hunter2")
    assert credentials_in("tracking_uri: http://bob:hunter2@mlflow:5000")
    assert credentials_in("aws_access_key_id = AKIAABCDEFGHIJKLMNOP")
    assert not credentials_in("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}", structured=True)
    assert not credentials_in("- name: PGPASSWORD\n  valueFrom: {secretKeyRef: {name: s, key: k}}", structured=True)


def test_the_dashboard_and_mlflow_listen_on_loopback_or_behind_auth():
    for name in LAUNCHER:  # the dashboard on the head's loopback (SSH port-forward), Ray's token everywhere
        raw = yaml.safe_load((CLUSTER / name).read_text())
        text = json.dumps(raw)
        assert "0.0.0.0" not in text and "--dashboard-host=127.0.0.1" in text
    (cluster,) = documents("kuberay-cluster.yaml")  # the pod's address, for the operator: behind the token
    assert cluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == "0.0.0.0"
    assert cluster["spec"]["authOptions"]["mode"] == "token"
    for doc in documents("mlflow.yaml"):  # the pod's address, behind basic auth; no LoadBalancer, no NodePort
        if doc["kind"] == "Service":
            assert doc["spec"].get("type", "ClusterIP") == "ClusterIP"
    serve = (CLUSTER / "mlflow" / "serve.sh").read_text()
    assert "--app-name basic-auth" in serve and '--host "${MLFLOW_HOST:-127.0.0.1}"' in serve
    compose = yaml.safe_load((CLUSTER / "docker-compose.yaml").read_text())
    assert all(port.startswith("127.0.0.1:") for s in compose["services"].values() for port in s.get("ports", []))
    assert "postgres" not in {p for s in compose["services"].values() for p in s.get("ports", [])}
    ini = (CLUSTER / "mlflow" / "basic_auth.ini").read_text()
    assert "authenticate_request_basic_auth" in ini and "admin_password" not in ini


def test_a_sweep_on_a_launcher_cluster_runs_as_many_trials_as_the_cluster_may_grow_to(tmp_path):
    """The head's bootstrap config (as `ray up` writes it, node types' resources filled in from their
    instance types): a GPU sweep runs a trial per GPU the autoscaler may add, not the one the empty
    cluster (no GPU node yet) would allow."""
    from flare_ray.experiment import load_experiment
    from flare_ray.search.cluster import autoscaling_capacity
    from flare_ray.search.searches import concurrency, plan_searches

    raw = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    raw["available_node_types"]["gpu_1x"]["resources"] = {"CPU": 8, "GPU": 1, "memory": 3e10}
    raw["available_node_types"]["gpu_4x"]["resources"] = {"CPU": 48, "GPU": 4, "memory": 1.8e11}
    bootstrap = tmp_path / "ray_bootstrap_config.yaml"
    bootstrap.write_text(yaml.safe_dump(raw))
    capacity = autoscaling_capacity(bootstrap)
    assert capacity["GPU"] == 8 * 1 + 2 * 4 and capacity["CPU"] == 8 * 8 + 2 * 48
    config = load_experiment(
        CLUSTER.parent / "search_spaces" / "rank.yaml",
        [f"storage_path={tmp_path}", "scaling.use_gpu=true", "task.languages=[jav]"],
    )
    (search,) = plan_searches(config)
    head = {"CPU": 8.0, "trial_driver": 1000.0}
    assert concurrency(search, head) == 1  # from the current nodes alone: one trial at a time
    merged = {k: head.get(k, 0.0) + capacity.get(k, 0.0) for k in {*head, *capacity}}
    assert concurrency(search, merged) == 16  # a trial per GPU the autoscaler may add


def test_the_mlflow_entry_script_names_the_first_missing_setting_before_starting(tmp_path):
    import subprocess

    env = {
        "PATH": "/usr/bin:/bin",
        "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path}/m.db",
        "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{tmp_path}/a.db",
        "MLFLOW_ARTIFACTS_DESTINATION": str(tmp_path),
    }
    done = subprocess.run(
        ["sh", str(CLUSTER / "mlflow" / "serve.sh")], env=env, capture_output=True, text=True, timeout=30
    )
    assert done.returncode != 0 and "MLFLOW_AUTH_ADMIN_PASSWORD" in done.stderr and "from a secret" in done.stderr

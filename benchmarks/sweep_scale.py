"""The sweep machinery at scale, simulated (issue 15, item 4): what a 1,000-trial sweep costs the driver.

Every trial goes the real way (``run_sweep``: Optuna TPE behind the ``ConcurrencyLimiter``, ASHA, Tune
trial actors reused across trials, ``run_trial`` writing the sample into the validated config, the
MLflow callback creating and filling the child run, checkpoints persisted to the sweep's storage and
logged as artifacts, selection, the registry) on a Ray cluster of several nodes on this machine
(``ray.cluster_utils.Cluster``), against an MLflow tracking *server* (``mlflow server`` on a free
localhost port, sqlite behind it). Only the training recipe is replaced, in every Ray worker (a
``worker_process_setup_hook``), by :func:`stand_in`: it takes no time but reports what the recipe
reports, per epoch (loss, validation score, throughput) and at the end (test scores), and writes a small
checkpoint (an adapter of a few KB, the trial config, predictions) whenever the epoch is the best.

The driver's overhead per trial: the CPU time of the driver process (Tune's loop, the searcher, the MLflow
callback and its writer threads, Ray's core worker) over the sweep, divided by its trials; beside it the
wall time per trial (the trials take ~0 s and run ``--concurrent`` at once, but share this machine's cores
with the simulated nodes and the MLflow server), and the time spent in the MLflow callback's hooks and the
searcher's calls (in Tune's loop, which they hold up).

    python benchmarks/sweep_scale.py                       # 100, 300 and 1,000 trials; appends to RESULTS.md
    python benchmarks/sweep_scale.py --trials 50 --results -
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import socket
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from common import report, served  # noqa: E402

EPOCHS = 3
ENV = {
    "RAY_TRAIN_V2_ENABLED": "1",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
}


def quality(sample: dict[str, Any]) -> float:
    """The stand-in's best validation score of a configuration: a smooth function with one optimum
    (learning rate 3e-4, r 16, add_relu) that TPE can learn."""
    lr = float(sample.get("training.learning_rate", 3e-4))
    r = int(sample.get("method.lora.r", 16))
    fusion = {"add_relu": 0.0, "add": -2.0, "mul": -6.0}.get(str(sample.get("method.flare.fusion")), -4.0)
    return 70.0 - 8.0 * (math.log10(lr) - math.log10(3e-4)) ** 2 - 1.5 * abs(math.log2(r) - 4) + fusion


def stand_in(trial_input) -> None:
    """In place of ``train_loop_per_worker`` (on the trial's ``TrialInput``): the recipe's reports and
    checkpoints, without training."""
    from flare_ray.digests import write_manifest
    from flare_ray.training import session
    from flare_ray.training.loop import _checkpoint

    experiment, language = trial_input.experiment, trial_input.language
    metric = experiment.search.metric
    sample = {
        "training.learning_rate": experiment.training.learning_rate,
        "method.lora.r": experiment.method.lora.r,
        "method.flare.fusion": experiment.method.flare.fusion,
    }
    top = quality(sample)
    best = {"score": None, "epoch": 0}
    for epoch in range(1, experiment.training.epochs + 1):
        score = top - 10.0 / epoch
        metrics = {
            "epoch": epoch,
            "train/loss": 1.0 / epoch,
            "train/seconds": 0.0,
            "train/tokens_per_second": 1e4,
            "validation/loss": 1.0 / epoch,
            metric: score,
        }
        checkpoint = None
        if best["score"] is None or score > best["score"]:
            best.update(score=score, epoch=epoch)
            checkpoint = _checkpoint(None, experiment, language, epoch, {"validation": _predictions()}, {}, epoch)
            _adapter(checkpoint)
            write_manifest(checkpoint)  # again, with the adapter
        session.report(metrics, checkpoint)
    # the recipe's last result (loop._final): the best score again, the test scores, the best adapter
    final = {
        "epoch": experiment.training.epochs,
        "final": True,
        "best_epoch": best["epoch"],
        metric: best["score"],
        "test/macro_f1": top - 5.0,
        "test/accuracy": top,
    }
    checkpoint = _checkpoint(
        None,
        experiment,
        language,
        best["epoch"],
        {"validation": _predictions(), "test": _predictions()},
        {"final": final},
        experiment.training.epochs,
    )
    _adapter(checkpoint)
    write_manifest(checkpoint)
    session.report(final, checkpoint)


def _predictions():
    import pandas as pd

    return pd.DataFrame({"id": [0, 1, 2, 3], "prediction": ["pos", "neg", "neu", "pos"], "label": ["pos"] * 4})


def _adapter(folder: Path) -> None:
    """A few KB of adapter, so that the checkpoint, its artifacts and the registry carry one."""
    import torch
    from safetensors.torch import save_file

    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "stand_in": True}))
    save_file({"lora_A": torch.zeros(4, 64), "lora_B": torch.zeros(64, 4)}, str(folder / "adapter_model.safetensors"))


def install_stand_in() -> None:
    """The worker process setup hook: every trial of this Ray job runs :func:`stand_in` as its recipe."""
    import flare_ray.training.loop as loop

    loop.train_loop_per_worker = stand_in


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def mlflow_server(folder: Path, timeout: float = 120) -> Iterator[str]:
    """``mlflow server`` on a free localhost port, runs in sqlite, artifacts served from ``folder``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "2",
        "--backend-store-uri",
        f"sqlite:///{folder / 'mlflow.db'}",
        "--artifacts-destination",
        str(folder / "artifacts"),
    ]
    with served(command, url + "/health", None, folder / "server.log", timeout):
        yield url


@contextlib.contextmanager
def simulated_cluster(nodes: int, cpus_per_node: int) -> Iterator[Any]:
    """A Ray cluster of ``nodes`` nodes on this machine (the head is the first), joined by this process with
    the stand-in recipe installed in every worker."""
    import cloudpickle
    import ray
    from ray.cluster_utils import Cluster

    os.environ.update(ENV)
    cluster = Cluster(
        initialize_head=True, connect=False, head_node_args={"num_cpus": cpus_per_node, "include_dashboard": False}
    )
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus_per_node)
    cluster.wait_for_nodes()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import benchmarks/
    ray.init(
        address=cluster.address,
        runtime_env={"worker_process_setup_hook": install_stand_in},
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def experiment(name: str, trials: int, concurrent: int, storage: Path, tracking_uri: str, cpus: float):
    from flare_ray.experiment import validate_experiment

    return validate_experiment(
        {
            "name": name,
            "model": {"name_or_path": "tiny:xlm-roberta", "stage1": None},
            "task": {"name": "nusax", "languages": ["jav"]},
            "method": {"kind": "flare", "lora": {"r": 8}, "flare": {"fusion": "add_relu", "fusion_layers": "all"}},
            "training": {"epochs": EPOCHS},
            "scaling": {"num_workers": 1, "use_gpu": False, "cpus_per_worker": cpus},
            "search": {
                "space": {
                    "training.learning_rate": {"type": "float", "log": True, "low": 1e-5, "high": 1e-2},
                    "method.lora.r": {"type": "categorical", "values": [4, 8, 16, 32, 64]},
                    "method.flare.fusion": {"type": "categorical", "values": ["add", "mul", "add_relu"]},
                },
                "num_samples": trials,
                "max_concurrent_trials": concurrent,
                "seeds": None,
                "scheduler": {"type": "asha", "grace_period": 1},
            },
            "storage_path": str(storage),
            "tracking": {"tracking_uri": tracking_uri},
        },
        source=f"benchmark {name}",
    )


@contextlib.contextmanager
def timed(owner: type, names: list[str], seconds: dict[str, float]) -> Iterator[None]:
    """Add the time spent in ``owner``'s methods ``names`` to ``seconds["<owner>.<name>"]``."""
    saved = {name: getattr(owner, name) for name in names}

    def wrap(name, method):
        def timed_method(*args, **kwargs):
            started = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                seconds[f"{owner.__name__}.{name}"] += time.perf_counter() - started

        return timed_method

    for name, method in saved.items():
        setattr(owner, name, wrap(name, method))
    try:
        yield
    finally:
        for name, method in saved.items():
            setattr(owner, name, method)


def sweep(trials: int, concurrent: int, root: Path, tracking_uri: str, cpus: float) -> dict[str, Any]:
    """One simulated sweep of ``trials`` trials on the joined cluster; what it cost and what MLflow holds."""
    from mlflow.tracking import MlflowClient
    from ray.tune.search.optuna import OptunaSearch

    from flare_ray.search.console import Console
    from flare_ray.search.sweep import run_sweep
    from flare_ray.tracking.callback import MLflowTrialCallback

    name = f"scale-{trials}"
    config = experiment(name, trials, concurrent, root / name, tracking_uri, cpus)
    seconds: dict[str, float] = defaultdict(float)
    callbacks: list[MLflowTrialCallback] = []  # the sweep's, to count their failed writes
    made = MLflowTrialCallback.__init__

    def init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        callbacks.append(self)

    callback_methods = ["on_trial_result", "on_checkpoint", "on_trial_complete", "on_trial_error"]
    with (
        open(os.devnull, "w") as quiet,
        contextlib.redirect_stdout(quiet),
        timed(MLflowTrialCallback, callback_methods, seconds),
        timed(OptunaSearch, ["suggest", "on_trial_result", "on_trial_complete"], seconds),
    ):
        MLflowTrialCallback.__init__ = init
        try:
            started, cpu = time.perf_counter(), time.process_time()
            summary = run_sweep(config, console=Console(stream=quiet))
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            MLflowTrialCallback.__init__ = made
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(config.tracking.experiment_name).experiment_id
    parent = summary.parent_run_id
    runs = client.search_runs([experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=50000)
    from flare_ray.tracking.mlflow_runs import TRIAL_TAG

    per_trial = defaultdict(int)
    for run in runs:
        per_trial[run.data.tags.get(TRIAL_TAG)] += 1
    metric = config.search.metric
    best_run = max(runs, key=lambda r: r.data.metrics.get(metric, -math.inf))
    selected = summary.languages[0]
    callback = sum(seconds[f"MLflowTrialCallback.{n}"] for n in callback_methods)
    searcher = sum(seconds[f"OptunaSearch.{n}"] for n in ("suggest", "on_trial_result", "on_trial_complete"))
    return {
        "trials": trials,
        "wall_s": wall,
        "per_trial_ms": 1000 * wall / trials,
        "driver_cpu_ms": 1000 * cpu / trials,
        "mlflow_callback_ms": 1000 * callback / trials,
        "searcher_ms": 1000 * searcher / trials,
        "failed_writes": sum(len(c.writers.errors) for c in callbacks),
        "failed_trials": summary.failed,
        "tune_trials": summary.trials,
        "runs": len(runs),
        "trials_with_runs": len(per_trial),
        "duplicate_runs": sum(n - 1 for n in per_trial.values() if n > 1),
        "finished_runs": sum(r.info.status == "FINISHED" for r in runs),
        "best_reported": best_run.data.metrics[metric],
        "best_trial": best_run.data.tags[TRIAL_TAG],
        "selected_trial": selected.trial_id,
        "selected_validation": selected.validation,
        "registered_version": selected.registered,
        "validation_steps_logged": sum(len(client.get_metric_history(r.info.run_id, metric)) for r in runs[:20]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, nargs="+", default=[100, 300, 1000], help="sweep sizes, one sweep each")
    parser.add_argument("--concurrent", type=int, default=8, help="trials at once (search.max_concurrent_trials)")
    parser.add_argument("--nodes", type=int, default=2, help="simulated Ray nodes (the head is one)")
    parser.add_argument("--cpus-per-node", type=int, default=2, help="logical CPUs each node offers")
    parser.add_argument(
        "--results",
        type=Path,
        default=REPO / "benchmarks" / "RESULTS.md",
        help="the Markdown file the results are appended to ('-': none)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write each sweep's row here")
    args = parser.parse_args(argv)
    from flare_ray.logs import log_to_file, quiet_libraries

    root = Path(tempfile.mkdtemp(prefix="flare_ray-scale-"))
    print(
        f"(library messages: {log_to_file(root / 'benchmark.log')}; MLflow server log: {root / 'mlflow' / 'server.log'})"
    )
    quiet_libraries()
    cpus = args.nodes * args.cpus_per_node / args.concurrent  # so that --concurrent trials fit at once
    rows = []
    with mlflow_server(root / "mlflow") as url, simulated_cluster(args.nodes, args.cpus_per_node):
        print(
            f"MLflow server {url}; Ray: {args.nodes} nodes x {args.cpus_per_node} CPUs; {args.concurrent} trials at once, "
            f"{EPOCHS} epochs each",
            flush=True,
        )
        for trials in args.trials:
            row = sweep(trials, args.concurrent, root, url, cpus)
            rows.append(row)
            print(
                f"  {trials:>5} trials: {row['wall_s']:.0f} s, {row['per_trial_ms']:.0f} ms/trial, driver CPU "
                f"{row['driver_cpu_ms']:.0f} ms/trial (MLflow callback "
                f"{row['mlflow_callback_ms']:.0f} ms, searcher {row['searcher_ms']:.1f} ms); {row['runs']} runs, "
                f"{row['duplicate_runs']} duplicates, {row['failed_trials']} failed; selected {row['selected_trial']} "
                f"({row['selected_validation']:.2f}), best reported {row['best_trial']} ({row['best_reported']:.2f})",
                flush=True,
            )
    lines = [
        f"## {datetime.date.today()} · sweep machinery at scale (simulated) · {platform.node()}, {os.cpu_count()} CPUs",
        "",
        f"`python benchmarks/sweep_scale.py`: {args.nodes} Ray nodes x {args.cpus_per_node} CPUs on this machine, "
        f"{args.concurrent} trials at once, {EPOCHS} epochs each, Optuna TPE + ASHA, MLflow server (sqlite).",
        "",
        "| trials | wall (s) | wall ms / trial | driver CPU ms / trial | MLflow callback ms / trial | searcher ms / trial | MLflow runs | duplicates | failed trials | failed MLflow writes | selection = best reported |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in rows:
        same = row["selected_trial"] == row["best_trial"]
        lines.append(
            f"| {row['trials']} | {row['wall_s']:.0f} | {row['per_trial_ms']:.0f} | {row['driver_cpu_ms']:.0f} | {row['mlflow_callback_ms']:.0f} | "
            f"{row['searcher_ms']:.1f} | {row['runs']} | {row['duplicate_runs']} | {row['failed_trials']} | {row['failed_writes']} | "
            f"{'yes' if same else 'NO'} |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    report("\n".join(lines) + "\n", args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())

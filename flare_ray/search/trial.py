"""A Tune trial: the function Tune runs for one trial, and where its recipe runs.

Tune samples a flat dict of key paths (``{"method.lora.r": 16, ...}``); :func:`run_trial` writes it into
the experiment config (its one validation) and runs the recipe,
:func:`flare_ray.training.loop.train_loop_per_worker`, which receives that validated object as it is, in
its :class:`~flare_ray.training.inputs.TrialInput`:

* a trial with one worker (no DeepSpeed, no ``search.worker_max_failures``) runs it in this process, which
  holds the worker's resources, and it reports to Tune itself (:mod:`flare_ray.training.session`);
* otherwise as a Ray Train run (``TorchTrainer``) on ``scaling.num_workers`` workers, whose reports (and
  checkpoint paths) ``TuneReportCallback`` forwards to Tune.

Either way ASHA and the MLflow callback see every epoch, and everything the process running the recipe
writes (prints, library messages, a traceback at a crash) is kept in the trial's log file,
:func:`trial_log`. This module imports nothing heavy at the top: a Train controller only needs the config
and Ray Train, and the process that trains imports the training code itself.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, TypeVar

import ray.train
import ray.tune

from flare_ray.experiment import ExperimentConfig, apply_sample
from flare_ray.logs import tee_output
from flare_ray.storage import join, local_copy, local_folder
from flare_ray.training.inputs import TrialInput

from .searches import seeded

Inputs = TypeVar("Inputs")  # what a recipe's worker loop receives (TrialInput, Stage1Input)
INPUTS_KEY = "inputs"  # Ray Train hands its workers a dict (train_loop_config): the recipe's inputs are under this key
# A custom resource that the head node of the clusters in cluster/ offers (and no GPU node): where a cluster
# has it, every trial's driver (Tune's trial actor, and the Train controller placed beside it) asks for one
# unit, so it runs on the head and a preempted GPU node takes only the trial's workers with it.
DRIVER_RESOURCE = "trial_driver"
REUSE_WAIT_SECONDS = 120  # how long a reused trial process waits for its previous trial to unwind


def logs_folder(storage_path: str) -> Path:
    """Where a sweep's log files go: ``<storage_path>/logs`` (with remote storage, a local temporary folder)."""
    local = local_folder(storage_path)
    return (local if local is not None else Path(tempfile.gettempdir()) / "flare_ray") / "logs"


def trial_log(storage_path: str, search: str, trial: str) -> Path:
    """The log file of a trial's workers: ``<logs folder>/<search>/<trial>.log``, on the worker's node."""
    return logs_folder(storage_path) / search / f"{trial}.log"


def run_trial(
    sample: dict[str, Any],
    *,
    experiment: ExperimentConfig,
    language: str,
    seeds: list[int | None],
    search: str = "search",
) -> None:
    """The Tune trainable of a search: one trial of ``experiment`` with Tune's ``sample`` written in."""
    # Tune reuses this process for a later trial once this one ended or ASHA stopped it, and waits for this
    # function to return first: 2 s by default, after which it fails the *later* trial ("Trainable runner
    # reuse requires reset_config() ..."). Unwinding a stopped trial (its epoch's report, freeing its model)
    # takes longer on a busy node.
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", str(REUSE_WAIT_SECONDS))
    config = apply_sample(experiment, seeded(sample, seeds))
    name = ray.tune.get_context().get_trial_name()
    inputs = TrialInput(
        config, language, log_file=str(trial_log(config.storage_path, search, name)), trial_started=time.time()
    )
    run(
        config.scaling, train_entry, inputs, name, join(config.storage_path, "train"), config.search.worker_max_failures
    )


def in_process(scaling, worker_max_failures: int = 0) -> bool:
    """Whether a trial runs its recipe in its own process (``scaling.in_trial_process``; not when Ray Train
    is to restart failed workers, ``search.worker_max_failures``) rather than as a Ray Train run."""
    return scaling.in_trial_process and not worker_max_failures


def trial_resources(scaling, worker_max_failures: int = 0) -> dict[str, float]:
    """What a trial's own Tune actor asks for: the worker's resources when it trains itself, else next to
    nothing (it only waits on its Train run, whose workers hold the resources), and one unit of
    :data:`DRIVER_RESOURCE` where the cluster offers it."""
    if in_process(scaling, worker_max_failures):
        return {k: v for k, v in scaling.resources_per_worker().items() if v > 0}
    return {"CPU": 0.01, **({DRIVER_RESOURCE: 1.0} if drivers_on_head() else {})}


def drivers_on_head() -> bool:
    """Whether the connected Ray cluster has a node offering :data:`DRIVER_RESOURCE` (the head of cluster/'s
    configs). Then trials run as Ray Train runs even with one worker: the driver on the head, the worker on
    a GPU node."""
    return ray.is_initialized() and ray.cluster_resources().get(DRIVER_RESOURCE, 0) >= 1


def run(
    scaling, loop: Callable[[Inputs], None], inputs: Inputs, name: str, storage_path: str, worker_max_failures: int = 0
) -> None:
    """Run a recipe (``loop(inputs)``) from within a Tune trial: in this process, or as a Ray Train run
    whose reports reach Tune through ``TuneReportCallback``."""
    if in_process(scaling, worker_max_failures):
        import gc

        from flare_ray.training.session import in_tune_trial

        try:
            with in_tune_trial():
                loop(inputs)
        finally:  # the process may run the next trial (Tune reuses it): free this one's model
            gc.collect()
            _empty_cuda_cache()
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    trainer(scaling, loop, inputs, name, storage_path, worker_max_failures, [TuneReportCallback()]).fit()


def _empty_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def train_entry(inputs: TrialInput) -> None:
    """What a trial's worker runs: its output into the trial's log, then the training recipe."""
    if inputs.log_file:
        tee_output(inputs.log_file)
    from flare_ray.training import session
    from flare_ray.training.loop import train_loop_per_worker

    rank, world = session.world()
    print(
        f"worker rank {rank} of {world} on Ray node {ray.get_runtime_context().get_node_id()} "
        f"({ray.util.get_node_ip_address()})",
        flush=True,
    )

    train_loop_per_worker(inputs)


def trainer(
    scaling,
    loop: Callable[[Inputs], None],
    inputs: Inputs,
    name: str,
    storage_path: str,
    worker_max_failures: int = 0,
    callbacks: list | None = None,
):
    """The Ray Train run of a recipe on ``scaling.num_workers`` workers, each running ``loop(inputs)``."""
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        partial(_unpacked, loop),
        train_loop_config={INPUTS_KEY: inputs},
        scaling_config=ray.train.ScalingConfig(
            num_workers=scaling.num_workers,
            use_gpu=scaling.use_gpu,
            resources_per_worker=scaling.resources_per_worker(),
        ),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            # The loop checkpoints every epoch, each with the best adapter so far, and last the best adapter with
            # the predictions: the latest checkpoint is the one to score; the one before is where a restart
            # falls back when the latest does not match its content hash (flare_ray.training.checkpoints).
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=worker_max_failures),
            callbacks=callbacks or [],
        ),
    )


def _unpacked(loop: Callable[[Inputs], None], train_loop_config: dict[str, Inputs]) -> None:
    """What a Ray Train worker runs: the recipe, with its inputs taken out of Ray Train's dict."""
    loop(train_loop_config[INPUTS_KEY])


def score_checkpoint(checkpoint: str, storage_path: str | None = None, role: str = "test"):
    """Score a trial's checkpoint (a folder, local or on the sweep's storage) from its ``trial_config.json``:
    for the best trial of a search when ASHA stopped it before its own test scoring. The scores
    (``{"test/<metric>": ...}``) and the per-example predictions table. A checkpoint with a ``sha256.json``
    is checked against it first (:class:`~flare_ray.digests.DigestMismatch` names the file and what is wrong);
    one an earlier version wrote, without, is scored as it is."""
    from flare_ray.digests import check_folder, has_manifest
    from flare_ray.training.evaluate import TRIAL_CONFIG_NAME, score_adapter

    with local_copy(checkpoint, storage_path or checkpoint) as folder:
        if has_manifest(Path(folder)):
            check_folder(Path(folder))
        record = json.loads((Path(folder) / TRIAL_CONFIG_NAME).read_text())
        experiment = ExperimentConfig.model_validate(record["experiment"])  # the checkpoint's JSON record
        return score_adapter(experiment, record["language"], Path(folder), role, record.get("epoch"))

"""Stage 1 of the paper's two-stage setup: a LoRA fine-tune on English task data.

The paper (Sec. 3.3) adapts a base model "previously fine-tuned on English task
data": a LoRA adapter (``stage1.lora``, default ``method.lora``) with the task
head is trained on the English side of the task's training split, selected on
the English side of the validation split (the best epoch, as the authors'
``load_best_model_at_end``), and saved as a peft adapter folder. Every trial
loads the base model exactly as stage 1 did (quantization included) and merges
that adapter into it (:func:`flare_ray.training.setup.merge_stage1`).

With ``model.stage1: auto`` the sweep calls :func:`ensure_stage1`: the folder is
keyed by a fingerprint of everything stage 1 depends on (base model, head,
quantization, task, the English records, LoRA and training settings with the
seed), trained once and reused by every trial and every later sweep with the
same fingerprint. The folder holds a ``sha256.json`` of the adapter's files (written before ``stage1.json``,
which is written last); a folder whose files no longer match it (or, from an earlier version without one,
whose safetensors do not parse) is trained again, with a warning naming the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from flare_ray.digests import has_manifest, write_manifest
from flare_ray.experiment import ExperimentConfig
from flare_ray.experiment.checks import stage1_folder_problem
from flare_ray.storage import exists, is_remote, join, local_copy, local_folder, read_text, upload, write_text
from flare_ray.tasks import get_task
from flare_ray.tasks.metrics import better

from . import session
from .engine import Engine
from .evaluate import mean_loss, score
from .inputs import Stage1Input
from .setup import build_trial, english_side, optimizer_steps, train_loader

if TYPE_CHECKING:
    import torch

STAGE1_INFO = "stage1.json"
# What a stage-1 folder holds, in the fingerprint: 2 saves every module the base checkpoint lacks (a missing
# pooler with the classifier), where 1 left them to the random state of each load
STAGE1_VERSION = 2
log = logging.getLogger(__name__)


def stage1_experiment(experiment: ExperimentConfig) -> ExperimentConfig:
    """The experiment as stage 1 runs it: plain LoRA (``stage1.lora``), ``stage1.training``, no stage 1."""
    update = {
        "model": experiment.model.model_copy(update={"stage1": None}),
        "method": experiment.method.model_copy(
            update={"kind": "lora", "lora": experiment.stage1.lora or experiment.method.lora}
        ),
        "training": experiment.stage1.training or experiment.training,
        "search": experiment.search.model_copy(update={"space": {}}),
    }
    return experiment.model_copy(update=update)


def fingerprint(experiment: ExperimentConfig) -> str:
    """A short hash of everything the stage-1 adapter depends on."""
    stage1 = stage1_experiment(experiment)
    task = get_task(stage1.task.task_config(stage1.task.languages[0]))
    english = [f"source_{f}" for f in task.text_fields] + (["label"] if task.labels else ["source_answers"])
    digest = hashlib.sha256()
    for role in ("train", "validation"):
        records = english_side(task, task.load(role)).select_columns(english)
        digest.update(json.dumps(records.to_dict(), sort_keys=True, default=str).encode())
    training = stage1.training.model_dump(mode="json", exclude={"eval_batch_size", "source_cache_gb"})
    if not training["group_by_length"]:  # off (the default): the fingerprints of the folders written before it
        del training["group_by_length"]
    if not training["compile"]:  # off (the default), as group_by_length
        del training["compile"]
    if not training["padding_free"]:  # off (the default), as group_by_length
        del training["padding_free"]
    model = stage1.model.model_dump(mode="json", exclude={"stage1"})
    if model["attn_implementation"] is None:  # transformers' choice (the default), as group_by_length
        del model["attn_implementation"]
    settings = {
        "model": model,
        "task": task.name,
        "lora": stage1.method.lora.model_dump(mode="json"),
        "training": training,
        "metric": [stage1.search.metric, stage1.search.mode],
        "version": STAGE1_VERSION,
    }
    digest.update(json.dumps(settings, sort_keys=True).encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class BestStage1Epoch:
    """Stage 1's best epoch so far, by the English validation metric (a better epoch replaces it): the adapter
    it saves and the scores its ``stage1.json`` keeps."""

    score: float | None = None  # its English validation metric (None: no epoch scored yet)
    epoch: int = 0
    state: dict[str, torch.Tensor] | None = None  # its adapter weights (Engine.adapter_state)
    scores: dict[str, float] = field(default_factory=dict)  # all its English validation scores, with the loss


def stage1_loop_per_worker(stage1_input: Stage1Input) -> None:
    experiment = stage1_input.experiment
    output = stage1_input.output  # a local folder or a URI (s3://...): rank 0 writes it from its node
    training = experiment.training
    metric = experiment.search.metric.split("/", 1)[1]
    rank, world = session.world()

    run = build_trial(experiment, experiment.task.languages[0], roles=("train", "validation"), english=True)
    task, encoder, adapted, validation = run.task, run.encoder, run.model, run.splits["validation"]
    loader = train_loader(run.splits["train"], encoder, training, rank, world)
    engine = Engine(
        adapted,
        training,
        experiment.scaling,
        optimizer_steps(loader, training),
        quantized=experiment.model.quantization != "none",
        rank=rank,
    )
    best = BestStage1Epoch()
    for epoch in range(1, training.epochs + 1):
        loss = engine.train_epoch(loader, epoch)
        with engine.autocast():
            scores = score(task, encoder, adapted, validation, training)
            scores["loss"] = mean_loss(encoder, adapted, validation, training.eval_batch_size, engine.device)
        if best.score is None or better(scores[metric], best.score, experiment.search.mode):
            with engine.gathered():
                best = BestStage1Epoch(scores[metric], epoch, engine.adapter_state(), scores)
        session.report(
            {"epoch": epoch, "train/loss": loss, **{f"english_validation/{k}": v for k, v in scores.items()}}
        )
    engine.load_adapter_state(best.state)
    with engine.gathered(), tempfile.TemporaryDirectory(prefix="stage1-") as local:
        if rank != 0:
            return
        Path(local, "adapter").mkdir()
        adapted.save_pretrained(Path(local, "adapter"))
        write_manifest(Path(local, "adapter"))  # checked on every reuse (ensure_stage1, the trials' merge)
        info = {
            "base_model": experiment.model.name_or_path,
            "task": task.name,
            "lora": experiment.method.lora.peft_kwargs(),
            "training": training.model_dump(mode="json"),
            "best_epoch": best.epoch,
            "english_validation": best.scores,
            "data": task.provenance(),
            "fingerprint": stage1_input.fingerprint,
        }
        upload(Path(local, "adapter"), output)
        write_text(join(output, STAGE1_INFO), json.dumps(info, indent=2, default=str))  # last: the folder is complete


def stage1_done(output: str | Path) -> str | Path:
    """The stage-1 folder a finished run wrote; an error if it wrote none."""
    if not exists(join(str(output), STAGE1_INFO)):
        raise RuntimeError(f"stage 1 finished but wrote no adapter to {output}")
    return output


def ensure_stage1(
    experiment: ExperimentConfig, train: Callable[[ExperimentConfig, str, str], Any]
) -> tuple[Path | str, dict[str, Any]]:
    """The stage-1 adapter of this experiment's fingerprint under ``<storage_path>/stage1/``:
    reused if it exists and its files are intact (:func:`reuse_problem`), else trained now by
    ``train(experiment, folder, fingerprint)`` (which runs :func:`stage1_loop_per_worker`), replacing a damaged
    one. Returns the folder (a local path, or a URI on remote storage) and its ``stage1.json`` (with
    ``reused``, and ``retrained``: what was wrong with the folder it replaced, where it did)."""
    key = fingerprint(experiment)
    if is_remote(experiment.storage_path):  # no rename there: the folder is complete once stage1.json is in it
        folder = join(experiment.storage_path, "stage1", key)
        damaged = None
        if exists(join(folder, STAGE1_INFO)):
            with local_copy(folder) as copy:  # what every trial downloads anyway
                damaged = _damaged(folder, reuse_problem(Path(copy)))
        reused = exists(join(folder, STAGE1_INFO)) and damaged is None
        if not reused:
            log.info("stage 1: training %s (fingerprint %s)", folder, key)
            stage1_done(train(experiment, folder, key))  # over the damaged files, stage1.json last again
        info = json.loads(read_text(join(folder, STAGE1_INFO)))
        return folder, {**info, "reused": reused, "path": folder, "fingerprint": key, "retrained": damaged}
    root = local_folder(experiment.storage_path) / "stage1"
    folder = root / key
    damaged = _damaged(folder, reuse_problem(folder)) if (folder / STAGE1_INFO).is_file() else None
    reused = (folder / STAGE1_INFO).is_file() and damaged is None
    if reused and not has_manifest(folder):  # an earlier version's folder, its safetensors intact: from now on
        write_manifest(folder)  # every reuse checks them against the hashes they have today
        log.info("stage 1: %s had no sha256.json (an earlier version wrote it): written now", folder)
    if not reused:
        log.info("stage 1: training %s (fingerprint %s)", folder, key)
        scratch = root / f".{key}-{uuid.uuid4().hex[:8]}"  # a concurrent sweep may train the same one
        train(experiment, str(scratch), key)
        stage1_done(scratch)
        if damaged is not None and reuse_problem(folder) is not None:  # (a concurrent sweep may have replaced it)
            _set_aside(folder)
        try:
            scratch.rename(folder)
        except OSError:  # another sweep finished first: use its folder
            shutil.rmtree(scratch, ignore_errors=True)
    info = json.loads((folder / STAGE1_INFO).read_text())
    return folder, {**info, "reused": reused, "path": str(folder), "fingerprint": key, "retrained": damaged}


def reuse_problem(folder: Path) -> str | None:
    """Why a finished stage-1 folder (its ``stage1.json`` written) cannot be reused, naming the file; None when
    it can: its files match its ``sha256.json`` (an earlier version's folder, without one: its safetensors and
    adapter config parse), and its ``stage1.json`` parses."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} is missing"
    problem = stage1_folder_problem(folder)
    if problem is not None:
        return problem
    try:
        json.loads((folder / STAGE1_INFO).read_text())
    except (OSError, ValueError) as err:
        return f"{folder / STAGE1_INFO} is unreadable ({type(err).__name__}: {err})"
    return None


def _damaged(folder: Path | str, problem: str | None) -> str | None:
    """``problem``, said where the sweep's log and console show it: the folder is trained again."""
    if problem is not None:
        log.warning("stage 1: %s cannot be reused: %s; training it again", folder, problem)
    return problem


def _set_aside(folder: Path) -> None:
    """Move a damaged stage-1 folder out of the way (a rename: a trial that holds its files open keeps them)
    and delete it."""
    aside = folder.with_name(f".{folder.name}-damaged-{uuid.uuid4().hex[:8]}")
    try:
        folder.rename(aside)
    except OSError:  # gone already (another sweep set it aside)
        return
    shutil.rmtree(aside, ignore_errors=True)

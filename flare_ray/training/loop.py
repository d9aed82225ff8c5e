"""One trial's recipe: the per-worker loop that Ray Train runs on every worker.

A trial trains one adapter for one (task, target language), read top to bottom:

1. setup (:func:`~flare_ray.training.setup.build_trial`): seed, splits, base
   model with stage 1 merged in, the method's adapter, the batch encoder;
2. epochs: train on the translate-train split, score the MT-validation split
   (model selection, as in the paper), report the metrics with an adapter-only
   checkpoint whenever the epoch is the best so far. The first step of a
   FLARE trial checks that every fusion site fused (never plain LoRA by
   accident). A run restarted after a failure (Ray Train's worker group, or
   Tune's trial) continues after its last checkpoint, whose training state
   (``resume/``: safetensors and JSON) it loads first;
3. test: restore the best epoch's adapter and score the gold test split once; the last report's
   checkpoint holds that adapter and the per-example predictions of the best epoch's validation and
   of the test (``predictions/<split>.parquet``).

Methods that train nothing (zero-shot, translate-test) skip step 2: the stage-1 model is scored on
validation (reported as epoch 0) and test. Translate-test on TyDiQA scores the test examples whose answer
markers survived translation, against the answers projected into English, and reports how many
(``test/examples`` of ``test/examples_total``; see :func:`~flare_ray.training.setup.translate_test_split`).

With several workers the model is wrapped in DDP (or a DeepSpeed engine when
the experiment names a DeepSpeed config); each rank scores a shard of the
records and the predictions are gathered (under ZeRO-3 every rank scores them
all), and rank 0 reports and checkpoints.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from flare_ray.experiment import ExperimentConfig
from flare_ray.fusion import FlareModel
from flare_ray.tasks.metrics import better

from . import session
from .adapter import METHODS
from .engine import Engine
from .evaluate import PREDICTIONS_DIR, RESUME_NAME, TRIAL_CONFIG_NAME, evaluate, mean_loss
from .inputs import TrialInput
from .setup import build_trial, optimizer_steps, train_loader
from .source_cache import attach_source_cache, share_source_cache
from .state_files import has_state, load_state, save_state

if TYPE_CHECKING:
    import torch

__all__ = ["TRIAL_CONFIG_NAME", "train_loop_per_worker"]


@dataclass(frozen=True)
class BestEpoch:
    """The best epoch so far, by the validation metric (a better epoch replaces it): what the test scoring
    restores, and what a restart continues from."""

    score: float | None = None  # its validation metric (None: no epoch scored yet)
    epoch: int = 0  # 0: none yet (or a method that trains nothing, scored as it is)
    state: dict[str, torch.Tensor] | None = None  # its adapter weights (Engine.adapter_state)
    predictions: pd.DataFrame | None = None  # its per-example validation predictions

    def resume_state(self) -> dict[str, Any]:
        """What the checkpoint's training state keeps of it (``"best"``): score, epoch, adapter weights."""
        return {"score": self.score, "epoch": self.epoch, "state": self.state}


def train_loop_per_worker(trial_input: TrialInput) -> None:
    experiment = trial_input.experiment  # validated once, by the trial's driver
    language = trial_input.language
    training, metric, mode = experiment.training, experiment.search.metric, experiment.search.mode
    rank, world = session.world()

    # 1. setup
    trial = build_trial(experiment, language)
    if not METHODS[experiment.method.kind].trains:  # zero-shot, translate-test: the stage-1 model, scored
        return _score_only(trial, experiment, language, rank)
    loader = train_loader(trial.splits["train"], trial.encoder, training, rank, world)
    engine = Engine(
        trial.model,
        training,
        experiment.scaling,
        optimizer_steps(loader, training),
        quantized=experiment.model.quantization != "none",
        rank=rank,
    )
    fusion_check = trial.model.require_fusion if isinstance(trial.model, FlareModel) else contextlib.nullcontext
    cache = attach_source_cache(trial.model, experiment, engine.zero3)  # FLARE: each source pass once
    shared = None
    if cache is not None:  # the sweep's rows of this model state, built by the first trial that needs them
        records = [r for role in ("train", "validation", "test") for r in trial.splits[role]]
        shared = share_source_cache(
            cache, trial.model, experiment, trial.encoder, records, engine.device, engine.autocast()
        )
        if shared["source_cache"] != "in memory":
            print(
                f"source cache: {shared['source_cache']} {shared['where']} in {shared['seconds']:.1f} s "
                f"({len(cache.shards) if cache.shards is not None else 0} rows there)",
                flush=True,
            )

    # 2. epochs, from the last checkpoint on when the run restarts after a failure
    best = BestEpoch()
    with session.latest_checkpoint() as restored:
        resume = None  # a checkpoint of an earlier version holds no training state: start again
        if restored is not None and has_state(restored / RESUME_NAME):
            resume = load_state(restored / RESUME_NAME)  # safetensors and JSON: nothing unpickled
        if resume is not None and "final" in resume:  # it had finished (then its process was lost): done again
            session.report(resume["final"], _copy(restored) if rank == 0 else None)
            return
        if resume is not None:
            best = _restore(restored, resume, engine)
    first = best.epoch + 1
    startup = _startup(trial_input.trial_started, started_training=time.time())
    warned_full, looked = False, (cache.hits, cache.misses) if cache is not None else (0, 0)
    for epoch in range(first, training.epochs + 1):
        started = time.perf_counter()
        check = fusion_check if epoch == first else contextlib.nullcontext
        train_loss = engine.train_epoch(loader, epoch, first_step=check)
        metrics: dict[str, Any] = {
            "epoch": epoch,
            "train/loss": train_loss,
            "train/seconds": time.perf_counter() - started,
            "train/learning_rate": engine.learning_rate,
            **{f"train/{k}": v for k, v in engine.throughput.items()},
        }
        if epoch == first and first > 1:
            metrics["resumed_from_epoch"] = first - 1
        if epoch == first:  # what the trial paid before its first step: from Tune's start, and its process's
            metrics.update(startup)
            if shared is not None:
                metrics["startup/source_cache_seconds"] = shared["seconds"]
        scores, predictions = _evaluate(engine, trial, "validation", epoch, rank, world, loss=True)
        metrics.update({f"validation/{k}": v for k, v in scores.items()})
        if cache is not None:  # this epoch's lookups (training and validation), and what the cache holds
            metrics.update({f"train/{k}": v for k, v in cache.stats(since=looked).items()})
            looked = (cache.hits, cache.misses)
            if cache.full and not warned_full:
                warned_full = True
                print(
                    f"source cache full at {cache.nbytes / 2**30:.2f} GB ({len(cache)} examples; "
                    "training.source_cache_gb): the others' source pass runs every step",
                    flush=True,
                )
        checkpoint = None
        if best.score is None or better(metrics[metric], best.score, mode):
            with engine.gathered():  # ZeRO-3: every rank gathers the adapter, rank 0 writes it
                best = BestEpoch(metrics[metric], epoch, engine.adapter_state(), predictions)
                if rank == 0:  # a checkpoint only when the epoch is the best so far: the latest one is the best one
                    resume = {**engine.training_state(), "best": best.resume_state()}
                    checkpoint = _checkpoint(
                        engine.unwrapped, experiment, language, epoch, {"validation": predictions}, resume
                    )
        session.report(metrics, checkpoint)

    # 3. test, with the best epoch's adapter
    engine.load_adapter_state(best.state)
    scores, predictions = _evaluate(engine, trial, "test", best.epoch, rank, world)
    scores.update(trial.test_metrics)
    with engine.gathered():
        _final(
            experiment,
            language,
            rank,
            engine.unwrapped,
            training.epochs,
            best,
            scores,
            {"validation": best.predictions, "test": predictions},
        )


def _startup(trial_started: float | None, started_training: float) -> dict[str, float]:
    """Seconds from the trial's start (``trial_started``, set where Tune runs it) and from its process's start
    to the first training step: setup, model load, imports; what a sweep pays again for every trial."""
    import psutil

    out = {"startup/process_seconds": started_training - psutil.Process().create_time()}
    if trial_started:
        out["startup/trial_seconds"] = started_training - trial_started
    return out


def _evaluate(engine: Engine, trial, split: str, epoch: int, rank: int, world: int, loss: bool = False):
    """The split's scores (with its mean loss) and per-example predictions, the same on every rank. With
    several workers each rank scores a contiguous shard and the predictions are gathered, except under ZeRO-3,
    whose every forward pass is a collective of all ranks: there every rank scores every record."""
    records, shard = trial.splits[split], (rank, world) if world > 1 and not engine.zero3 else None
    with engine.autocast():
        scores, predictions = evaluate(
            trial.task, trial.encoder, engine.unwrapped, records, engine.training, split, epoch, shard=shard
        )
        if loss:
            scores["loss"] = mean_loss(
                trial.encoder, engine.unwrapped, records, engine.training.eval_batch_size, engine.device, shard=shard
            )
    return scores, predictions


def _restore(folder: Path, resume: dict[str, Any], engine: Engine) -> BestEpoch:
    """Continue from a checkpoint: its epoch's adapter, the optimizer and schedule; the best epoch so far (with
    its validation predictions), the epoch the checkpoint holds."""
    frame = folder / PREDICTIONS_DIR / "validation.parquet"
    predictions = pd.read_parquet(frame) if frame.is_file() else None
    best = BestEpoch(resume["best"]["score"], resume["best"]["epoch"], resume["best"]["state"], predictions)
    engine.load_adapter_state(best.state)
    engine.load_training_state(resume)
    print(f"resumed from the checkpoint of epoch {best.epoch} ({folder})", flush=True)
    return best


def _copy(folder: Path) -> Path:
    """A checkpoint to report again (a report moves its folder to storage, then removes it)."""
    copy = Path(tempfile.mkdtemp(prefix="trial-final-"))
    shutil.copytree(folder, copy, dirs_exist_ok=True)
    return copy


def _score_only(trial, experiment: ExperimentConfig, language: str, rank: int) -> None:
    """A method that trains nothing: validation (one result, epoch 0) and test scores of the model as it is."""
    model = trial.model if experiment.model.quantization != "none" else trial.model.to(session.device())
    training, metric = experiment.training, experiment.search.metric
    scores, validation = evaluate(
        trial.task, trial.encoder, model, trial.splits["validation"], training, "validation", 0
    )
    scores["loss"] = mean_loss(
        trial.encoder, model, trial.splits["validation"], training.eval_batch_size, next(model.parameters()).device
    )
    metrics = {"epoch": 0, **{f"validation/{k}": v for k, v in scores.items()}}
    session.report(metrics)
    scores, test = evaluate(trial.task, trial.encoder, model, trial.splits["test"], training, "test", 0)
    scores.update(trial.test_metrics)  # translate-test on QA: how many test examples it scored, against which answers
    best = BestEpoch(metrics[metric], 0)
    _final(experiment, language, rank, None, 0, best, scores, {"validation": validation, "test": test})


def _final(
    experiment: ExperimentConfig,
    language: str,
    rank: int,
    model,
    epoch: int,
    best: BestEpoch,
    scores: dict,
    predictions: dict,
):
    """The trial's last result: the best epoch's score again (Optuna learns from the last result), the gold
    test scores, and a checkpoint with the best adapter and every split's predictions."""
    final = {"epoch": epoch, "final": True, "best_epoch": best.epoch, experiment.search.metric: best.score}
    final.update({f"test/{k}": v for k, v in scores.items()})
    checkpoint = None
    if rank == 0:  # with the final result itself: a trial restarted after it (its process lost) reports it again
        checkpoint = _checkpoint(model, experiment, language, best.epoch, predictions, {"final": final})
    session.report(final, checkpoint)


def _checkpoint(
    model,
    experiment: ExperimentConfig,
    language: str,
    epoch: int,
    predictions: dict,
    resume: dict[str, Any] | None = None,
) -> Path:
    """The adapter only (peft + FLARE weights, safetensors; none for a method that trains nothing; never the
    frozen base model, nor DeepSpeed's own checkpoint with its ZeRO shards), the trial's config, the
    per-example predictions (``predictions/<split>.parquet``) and what a restart after a failure continues
    from (``resume/``: safetensors and JSON: the best epoch so far with its adapter, the optimizer and schedule;
    in the last checkpoint, the final result).
    """
    directory = Path(tempfile.mkdtemp(prefix=f"trial-epoch{epoch}-"))
    if model is not None:
        model.save_pretrained(directory)
    if resume is not None:
        save_state(resume, directory / RESUME_NAME)
    (directory / TRIAL_CONFIG_NAME).write_text(
        json.dumps({"experiment": experiment.model_dump(mode="json"), "language": language, "epoch": epoch}, indent=2)
    )
    (directory / PREDICTIONS_DIR).mkdir()
    for split, frame in predictions.items():
        if frame is not None:
            frame.to_parquet(directory / PREDICTIONS_DIR / f"{split}.parquet", index=False)
    return directory

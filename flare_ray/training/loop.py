"""One trial's recipe: the per-worker loop that Ray Train runs on every worker.

A trial trains one adapter for one (task, target language), read top to bottom:

1. setup (:func:`~flare_ray.training.setup.build_trial`): seed, splits, base
   model with stage 1 merged in, the method's adapter, the batch encoder;
2. epochs: train on the translate-train split, score the MT-validation split
   (model selection, as in the paper), report the metrics with a checkpoint
   every epoch. Each checkpoint holds the best epoch's adapter and validation
   predictions (so the latest checkpoint is always the one to score, register
   and log), and the training state of the epoch just trained (``resume/``:
   safetensors and JSON); its ``sha256.json``, written last, is checked before a
   restart uses it. The first step of a FLARE trial checks that every fusion site
   fused (never plain LoRA by accident). A run restarted after a failure (Ray
   Train's worker group, Tune's trial, a sweep resumed after its driver died)
   continues after its newest good checkpoint
   (:func:`~flare_ray.training.session.latest_checkpoint`), so it never trains
   an epoch twice. It first reports again, marked ``replayed``, the results of
   the epochs that checkpoint holds (kept in its training state): a result
   lost when the worker or the driver died after the checkpoint reached storage
   reaches Tune and MLflow that way, and where it had arrived they keep the
   first copy (:func:`_replay`);
3. test: restore the best epoch's adapter and score the gold test split once; the last report's
   checkpoint holds that adapter and the per-example predictions of the best epoch's validation and
   of the test (``predictions/<split>.parquet``).

Methods that train nothing (zero-shot, translate-test) skip step 2: the stage-1 model is scored on
validation (reported as epoch 0) and test. Translate-test on TyDiQA scores the test examples whose answer
markers survived translation, against the answers projected into English, and reports how many
(``test/examples`` of ``test/examples_total``; see :func:`~flare_ray.training.setup.translate_test_split`).

Every result carries where the trial's time went so far (``time/*``: start-up, setup, source cache, data,
optimizer steps, validation, checkpoints, test; :mod:`~flare_ray.training.timing`).

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

from flare_ray.digests import MANIFEST, write_manifest
from flare_ray.experiment import ExperimentConfig
from flare_ray.fusion import FlareModel
from flare_ray.models.loading import attn_implementation
from flare_ray.tasks.metrics import better

from . import session
from .adapter import METHODS
from .checkpoints import REPLAYED_CHECKPOINT_KEY, REPLAYED_KEY, TRAINED_KEY
from .engine import ATTENTION_KEY, Engine
from .evaluate import PREDICTIONS_DIR, RESUME_NAME, TRIAL_CONFIG_NAME, evaluate
from .inputs import TrialInput
from .setup import build_trial, optimizer_steps, train_loader
from .source_cache import attach_source_cache, share_source_cache
from .state_files import has_state, load_state, save_state
from .timing import Clock

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
    clock = Clock(trial_input.trial_started)  # where the trial's time goes, reported with every result (time/*)

    # 1. setup
    with clock.phase("setup"):
        trial = build_trial(experiment, language)
    if not METHODS[experiment.method.kind].trains:  # zero-shot, translate-test: the stage-1 model, scored
        return _score_only(trial, experiment, language, rank, clock)
    with clock.phase("setup"):
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
        with clock.phase("source_cache"):
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
    best, trained, kept = BestEpoch(), 0, None  # kept: the best epoch's adapter and predictions (rank 0)
    history: list[dict[str, Any]] = []  # every epoch's reported metrics, kept in each checkpoint (replayed)
    with clock.phase("setup"), session.latest_checkpoint() as restored:
        resume = None  # a checkpoint of an earlier version holds no training state: start again
        if restored is not None and has_state(restored.folder / RESUME_NAME):
            resume = load_state(restored.folder / RESUME_NAME)  # safetensors and JSON: nothing unpickled
        if resume is not None and "final" in resume:  # it had finished (then its process was lost): done again
            _replay(resume.get("history", []))
            final = {**resume["final"], REPLAYED_KEY: 1}
            session.report(final, _copy(restored.folder) if rank == 0 else None)
            return
        if resume is not None:
            best, trained = _restore(restored.folder, resume, engine)
            kept = _keep_best(restored.folder) if rank == 0 else None
            history = list(resume.get("history", []))  # none in a checkpoint of an earlier version
            _replay(history, restored.where)
            if history:  # the time the attempts before this one spent, up to that checkpoint
                clock.carry(history[-1])
    first = trained + 1
    startup = _startup(trial_input.trial_started, started_training=time.time())
    warned_full, looked = False, (cache.hits, cache.misses) if cache is not None else (0, 0)
    for epoch in range(first, training.epochs + 1):
        started = time.perf_counter()
        check = fusion_check if epoch == first else contextlib.nullcontext
        train_loss = engine.train_epoch(loader, epoch, first_step=check)
        for phase, seconds in engine.timing.items():  # waiting for batches, and the steps
            clock.add(phase, seconds)
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
            metrics[ATTENTION_KEY] = attn_implementation(trial.model)  # what the model runs (a tag on its run)
            if shared is not None:
                metrics["startup/source_cache_seconds"] = shared["seconds"]
        with clock.phase("validation"):
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
        metrics.update(clock.metrics())  # the trial's time so far
        history.append(_plain(metrics))
        checkpoint = None
        with clock.phase("checkpoint"), engine.gathered():  # ZeRO-3: every rank gathers the adapter, rank 0 writes it
            improved = best.score is None or better(metrics[metric], best.score, mode)
            if improved:
                best = BestEpoch(metrics[metric], epoch, engine.adapter_state(), predictions)
            if rank == 0:  # every epoch: a restart continues after it; the best adapter rides along
                if improved:
                    kept = _save_best(engine.unwrapped, predictions, kept)
                resume = {
                    **engine.training_state(),
                    "epoch": epoch,
                    "adapter": None if improved else engine.adapter_state(),  # None: the best's, stored once
                    "best": best.resume_state(),
                    "history": history,
                }
                checkpoint = _epoch_checkpoint(kept, experiment, language, best.epoch, epoch, resume)
        with clock.phase("checkpoint"):
            session.report(metrics, checkpoint)
    if kept is not None:
        shutil.rmtree(kept, ignore_errors=True)

    # 3. test, with the best epoch's adapter
    with clock.phase("test"):
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
            history,
            clock,
        )


def _replay(history: list[dict[str, Any]], where: str | None = None) -> None:
    """Report again, marked :data:`~flare_ray.training.checkpoints.REPLAYED_KEY`, the results of the epochs a
    restart continues after, as first reported (every rank, as every epoch: Ray Train's reports are collective).

    The checkpoint of an epoch reaches storage before its result reaches the driver; a worker or a driver that
    dies between the two leaves an epoch that is never trained again, so without this it would never reach Tune
    or MLflow (a Ctrl-C can lose several: the trials train on while the driver saves its state). Which of them
    did arrive, the trial cannot know: all go again, and each consumer keeps the first copy of an epoch it has
    (the MLflow callback by the run's last epoch step, the console by the trial's last line; ASHA records a trial
    once per rung, so an epoch it has seen changes nothing). No checkpoint rides along (the one the run continues
    from is on storage already): the last result names it (:data:`REPLAYED_CHECKPOINT_KEY`), for the MLflow run
    of a trial that ends before its next checkpoint (ASHA stops it on the result it had lost)."""
    for i, metrics in enumerate(history):
        again = {**metrics, REPLAYED_KEY: 1}
        if where and i == len(history) - 1:
            again[REPLAYED_CHECKPOINT_KEY] = where
        session.report(again)


def _plain(metrics: dict[str, Any]) -> dict[str, Any]:
    """An epoch's metrics as the training state can keep them without pickle: numbers (numpy's as Python's),
    strings, None."""
    return {key: value.item() if hasattr(value, "item") else value for key, value in metrics.items()}


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
    with engine.autocast():  # a task head's metric and loss: one pass (evaluate)
        return evaluate(
            trial.task, trial.encoder, engine.unwrapped, records, engine.training, split, epoch, shard=shard, loss=loss
        )


def _restore(folder: Path, resume: dict[str, Any], engine: Engine) -> tuple[BestEpoch, int]:
    """Continue from a checkpoint: the adapter, optimizer and schedule of the epoch it was written after; the
    best epoch so far (with its validation predictions). Also the number of epochs trained. A checkpoint of an
    earlier version (written at a new best only) holds no ``epoch``: the best epoch is the one trained last."""
    frame = folder / PREDICTIONS_DIR / "validation.parquet"
    predictions = pd.read_parquet(frame) if frame.is_file() else None
    best = BestEpoch(resume["best"]["score"], resume["best"]["epoch"], resume["best"]["state"], predictions)
    trained = resume.get("epoch", best.epoch)
    current = resume.get("adapter")
    engine.load_adapter_state(current if current is not None else best.state)
    engine.load_training_state(resume)
    print(
        f"resumed from the checkpoint of epoch {trained} (the best so far: epoch {best.epoch}) ({folder})", flush=True
    )
    return best, trained


def _save_best(model, predictions: pd.DataFrame | None, previous: Path | None) -> Path:
    """The best epoch's adapter (what a checkpoint's top level holds) and validation predictions, in a local
    folder of its own that every checkpoint until the next best copies; the previous best's folder goes."""
    if previous is not None:
        shutil.rmtree(previous, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix="trial-best-"))
    if model is not None:
        model.save_pretrained(folder)
    (folder / PREDICTIONS_DIR).mkdir()
    if predictions is not None:
        predictions.to_parquet(folder / PREDICTIONS_DIR / "validation.parquet", index=False)
    return folder


def _keep_best(restored: Path) -> Path:
    """The restored checkpoint's best adapter and validation predictions (everything at its top level but the
    trial record, its manifest and the training state), kept for the checkpoints that follow."""
    folder = Path(tempfile.mkdtemp(prefix="trial-best-"))
    skip = {RESUME_NAME, TRIAL_CONFIG_NAME, MANIFEST}
    for item in restored.iterdir():
        if item.name in skip:
            continue
        if item.is_dir():
            shutil.copytree(item, folder / item.name)
        else:
            shutil.copy2(item, folder / item.name)
    return folder


def _epoch_checkpoint(
    kept: Path, experiment: ExperimentConfig, language: str, best_epoch: int, trained: int, resume: dict[str, Any]
) -> Path:
    """An epoch's checkpoint: the best epoch's adapter and predictions (a copy of ``kept``), the trial record
    (``epoch``: the best epoch, whose adapter it holds; ``trained_epochs``: how far it got) and the training
    state, then its manifest."""
    directory = Path(tempfile.mkdtemp(prefix=f"trial-epoch{trained}-"))
    shutil.copytree(kept, directory, dirs_exist_ok=True)
    save_state(resume, directory / RESUME_NAME)
    _write_record(directory, experiment, language, best_epoch, trained)
    write_manifest(directory)
    return directory


def _write_record(
    directory: Path, experiment: ExperimentConfig, language: str, epoch: int, trained: int, final: bool = False
) -> None:
    record = {"experiment": experiment.model_dump(mode="json"), "language": language, "epoch": epoch}
    record.update({TRAINED_KEY: trained, **({"final": True} if final else {})})
    (directory / TRIAL_CONFIG_NAME).write_text(json.dumps(record, indent=2))


def _copy(folder: Path) -> Path:
    """A checkpoint to report again (a report moves its folder to storage, then removes it)."""
    copy = Path(tempfile.mkdtemp(prefix="trial-final-"))
    shutil.copytree(folder, copy, dirs_exist_ok=True)
    return copy


def _score_only(trial, experiment: ExperimentConfig, language: str, rank: int, clock: Clock | None = None) -> None:
    """A method that trains nothing: validation (one result, epoch 0) and test scores of the model as it is."""
    clock = clock or Clock()
    with clock.phase("setup"):
        model = trial.model if experiment.model.quantization != "none" else trial.model.to(session.device())
    training, metric = experiment.training, experiment.search.metric
    with clock.phase("validation"):
        scores, validation = evaluate(
            trial.task, trial.encoder, model, trial.splits["validation"], training, "validation", 0, loss=True
        )
    metrics = {"epoch": 0, **{f"validation/{k}": v for k, v in scores.items()}, **clock.metrics()}
    metrics[ATTENTION_KEY] = attn_implementation(model)
    with clock.phase("checkpoint"):
        session.report(metrics)
    with clock.phase("test"):
        scores, test = evaluate(trial.task, trial.encoder, model, trial.splits["test"], training, "test", 0)
    scores.update(trial.test_metrics)  # translate-test on QA: how many test examples it scored, against which answers
    best = BestEpoch(metrics[metric], 0)
    predictions = {"validation": validation, "test": test}
    _final(experiment, language, rank, None, 0, best, scores, predictions, [metrics], clock)


def _final(
    experiment: ExperimentConfig,
    language: str,
    rank: int,
    model,
    epoch: int,
    best: BestEpoch,
    scores: dict,
    predictions: dict,
    history: list[dict[str, Any]],
    clock: Clock,
):
    """The trial's last result: the best epoch's score again (Optuna learns from the last result), the gold
    test scores, where the trial's time went (up to this result's checkpoint), and a checkpoint with the best
    adapter and every split's predictions (and, with the final result, every epoch's: a restart after it reports
    them all again, :func:`_replay`)."""
    final = {"epoch": epoch, "final": True, "best_epoch": best.epoch, experiment.search.metric: best.score}
    final.update({f"test/{k}": v for k, v in scores.items()})
    final.update(clock.metrics())
    checkpoint = None
    if rank == 0:  # with the final result itself: a trial restarted after it (its process lost) reports it again
        resume = {"final": final, "history": [_plain(m) for m in history]}
        checkpoint = _checkpoint(model, experiment, language, best.epoch, predictions, resume, epoch)
    session.report(final, checkpoint)


def _checkpoint(
    model,
    experiment: ExperimentConfig,
    language: str,
    epoch: int,
    predictions: dict,
    resume: dict[str, Any],
    trained: int,
) -> Path:
    """The final checkpoint: the adapter only (peft + FLARE weights, safetensors; none for a method that trains
    nothing; never the frozen base model, nor DeepSpeed's own checkpoint with its ZeRO shards), the trial's
    record, the per-example predictions (``predictions/<split>.parquet``) and the final result (``resume/``,
    reported again by a trial restarted after it); its manifest last.
    """
    directory = Path(tempfile.mkdtemp(prefix=f"trial-epoch{epoch}-"))
    if model is not None:
        model.save_pretrained(directory)
    save_state(resume, directory / RESUME_NAME)
    _write_record(directory, experiment, language, epoch, trained, final=True)
    (directory / PREDICTIONS_DIR).mkdir()
    for split, frame in predictions.items():
        if frame is not None:
            frame.to_parquet(directory / PREDICTIONS_DIR / f"{split}.parquet", index=False)
    write_manifest(directory)
    return directory

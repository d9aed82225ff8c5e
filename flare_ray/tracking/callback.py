"""The MLflow child run of every Tune trial: its hyperparameters, per-epoch curves, test scores and adapter.

:class:`MLflowTrialCallback` (a Ray Tune callback, on the Tune RunConfig) opens
a nested child run per trial, found again by the trial id on resume, so a
resumed sweep never duplicates runs: the runs of trials that started after the
search's last saved state (Tune does not know them on resume, and its searcher
suggests others in their place) are deleted when the search resumes.

Tune calls its callbacks in the loop that drives every trial, so only what must be there is: creating a
trial's run (one request). Its params, each epoch's metrics, the artifacts and its end go to background
writers, in order per run (:class:`OrderedWriters`), and the search waits for them at its end
(:meth:`MLflowTrialCallback.flush`) before anything reads the runs back.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

from mlflow.entities import Metric, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.integration.ray_train import (
    CHECKPOINT_PATH_KEY,  # where Train's checkpoint path reaches Tune
)

from flare_ray.digests import MANIFEST
from flare_ray.secrets import redact, unredact
from flare_ray.storage import is_remote, local_copy

from .mlflow_runs import (
    ADAPTER_PATH,
    ATTENTION_TAG,
    CHECKPOINT_TAG,
    DESCRIPTION_TAG,
    LANGUAGE_TAG,
    PREDICTIONS_PATH,
    SEARCH_TAG,
    TRIAL_TAG,
    child_runs,
    log_params,
)
from .urls import BEST_EPOCH, BEST_PREFIX

ERROR_TAG = "flare_ray.error"  # a failed trial's reason, on its MLflow run
# A restarted trial reports the results of the epochs its checkpoint holds again (flare_ray.training.loop._replay):
# marked "replayed", the last naming the checkpoint it continues from (the names of
# flare_ray.training.checkpoints.REPLAYED_KEY and REPLAYED_CHECKPOINT_KEY, which this layer does not import).
REPLAYED_CHECKPOINT_KEY = "replayed_checkpoint"
# What a trial's worker found out and reports as a string in a result (its first), tagged on its run: the attention
# kernels its model runs (the name of flare_ray.training.engine.ATTENTION_KEY).
RESULT_TAGS = {"model/attn_implementation": ATTENTION_TAG}
log = logging.getLogger(__name__)


def _metrics(result: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if "/" in key or key in {"epoch", "best_epoch"}:
            out[key] = float(value)
    return out


class OrderedWriters:
    """A few writer threads; the writes of one run go to the same thread, so they happen in order. A write
    that fails (after the MLflow client's own retries) is logged and counted in :attr:`errors`.

    Not MLflow's asynchronous logging (``log_batch(..., synchronous=False)``), which covers params, metrics and
    tags but not artifacts nor a run's end: its queue belongs to the tracking store, one per URI for the whole
    process (every search's callback), and ``set_terminated``, the only way to end a run with its end time, shuts
    that queue down while other threads add to it, so their writes fail ("cannot schedule new futures after
    shutdown", MLflow 3.17). It also writes one run's batches in parallel, not in order.
    """

    def __init__(self, threads: int = 4) -> None:
        self._pools = [ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow-writer") for _ in range(threads)]
        self._pending: list[Future] = []
        self._lock = threading.Lock()
        self.errors: list[str] = []

    def submit(self, run_id: str, what: str, write: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                write()
            except Exception as err:  # noqa: BLE001 - one lost write must not stop the others, nor the sweep
                message = f"MLflow run {run_id}: {what} failed: {redact(str(err))[:500]}"
                log.error(message)
                with self._lock:
                    self.errors.append(message)

        future = self._pools[zlib.crc32(run_id.encode()) % len(self._pools)].submit(guarded)
        with self._lock:
            self._pending = [f for f in self._pending if not f.done()] + [future]

    def wait(self) -> None:
        """Until every write submitted so far is done."""
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()


class MLflowTrialCallback(Callback):
    """One nested MLflow child run per Tune trial, with its curves, its best adapter and its predictions.

    Each child run is self-describing: ``describe`` (given by the search) turns the trial's Tune config into
    its whole resolved config, logged as flattened params, and its tags (method, seed, grid cell,
    configuration, config schema version); the language and trial id are tagged here. The run is created
    at the trial's first result, or when it fails: a trial that never reported and did not fail (e.g. started
    just before Ctrl-C) leaves no run behind.
    """

    def __init__(
        self,
        tracking_uri: str,
        parent_run_id: str,
        language: str,
        metric: str,
        mode: str,
        storage_path: str,
        describe: Callable[[dict[str, Any]], tuple[dict[str, Any], dict[str, str]]] | None = None,
        search: str = "",
        label: Callable[[dict[str, Any]], str] | None = None,
    ) -> None:
        """``describe``: a trial's Tune config -> (its resolved config as nested params, its tags); ``search``:
        the search's name, tagged on its runs; ``label``: a trial's Tune config -> what it varies in a few words
        (``flare fusion=add seed=1``, as the console says it), its run's name after the language."""
        self.tracking_uri = tracking_uri
        self.search = search
        self.storage_path = storage_path
        self.parent_run_id = parent_run_id
        self.language = language
        self.metric = metric
        self.mode = mode
        self.describe = describe or (lambda config: (dict(config), {}))
        self.label = label
        self._best: dict[str, tuple[float, int]] = {}  # trial id -> its best validation score so far, its epoch
        self.client = MlflowClient(tracking_uri)
        self.writers = OrderedWriters()
        self._runs: dict[str, str] = {}  # trial id -> run id
        self._earlier: dict[str, str] | None = None  # the parent's child runs from before a resume, read once
        self._experiment_id: str | None = None
        self._checkpoints: dict[str, str] = {}  # trial id -> its latest checkpoint (it holds the best adapter)
        # trial id -> the last epoch logged to its run, and whether its final result was: a restarted trial that
        # reports an epoch again (or its final result) logs it once (not saved with the callback: what a killed
        # driver submitted may not have been written, so a resumed run's is read back from MLflow)
        self._logged: dict[str, tuple[int, bool]] = {}
        # trial id -> the step and time/* figures of its last result (where its time went so far): logged once, with
        # its final result, or at its end where it has none (stopped by the scheduler, failed); not a per-epoch curve
        self._times: dict[str, tuple[int, dict[str, float]]] = {}
        self._restored = False  # set when Tune restores this callback (--resume): the search reconciles its runs

    def __getstate__(self) -> dict[str, Any]:  # Tune keeps its callbacks in the experiment state (--resume)
        state = self.__dict__.copy()
        for live in ("client", "writers", "_earlier", "_logged", "_best", "_times"):
            state.pop(live)
        state["tracking_uri"] = redact(self.tracking_uri)  # saved without its credentials (in tuner.pkl)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        # --resume runs with the same $MLFLOW_TRACKING_URI, which gives the saved URI its credentials back
        uri = unredact(state["tracking_uri"], os.environ.get("MLFLOW_TRACKING_URI"))
        self.__dict__.update(
            state,
            tracking_uri=uri,
            client=MlflowClient(uri),
            writers=OrderedWriters(),
            _earlier=None,
            _logged={},
            _best={},
            _times={},
            _restored=True,
        )

    def on_step_begin(self, iteration: int, trials: list[Trial], **info) -> None:
        if self._restored:  # the first step of a resumed search: Tune's ``trials`` are the ones it saved
            self._restored = False
            self._forget_unsaved(trials)

    def _forget_unsaved(self, trials: list[Trial]) -> None:
        """Delete this search's runs whose trials Tune did not save before the interrupt: their progress is
        lost (the searcher suggests other trials in their place), and a run left behind would duplicate one."""
        known = {trial.trial_id for trial in trials}
        earlier = self._earlier_runs()
        unsaved = [
            run
            for trial_id, run in earlier.items()
            if self.search and run.data.tags.get(SEARCH_TAG) == self.search and trial_id not in known
        ]
        for run in unsaved:
            self.client.delete_run(run.info.run_id)
            earlier.pop(run.data.tags.get(TRIAL_TAG))
        if unsaved:
            log.warning(
                "search %s: deleted the MLflow runs of %d trial(s) that started after its last saved state "
                "(%s); Tune runs other trials in their place",
                self.search,
                len(unsaved),
                ", ".join(run.data.tags.get(TRIAL_TAG, "?") for run in unsaved),
            )

    def _earlier_runs(self) -> dict[str, Any]:
        """The parent's child runs made before a resume, by trial id: read once (one paged search), not looked
        up by tag for every trial."""
        if self._earlier is None:
            self._experiment_id = self.client.get_run(self.parent_run_id).info.experiment_id
            self._earlier = {
                run.data.tags.get(TRIAL_TAG): run
                for run in child_runs(self.client, self._experiment_id, self.parent_run_id)
            }
        return self._earlier

    def _existing(self, trial_id: str) -> str | None:
        """The run of ``trial_id`` made before a resume, if any."""
        run = self._earlier_runs().get(trial_id)
        return run.info.run_id if run is not None else None

    def run_id(self, trial: Trial) -> str:
        if trial.trial_id in self._runs:
            return self._runs[trial.trial_id]
        found = self._existing(trial.trial_id)
        if found is not None:
            run_id = found
            self.writers.submit(run_id, "status", lambda: self.client.update_run(run_id, status="RUNNING"))
        else:
            params, tags = self.describe(trial.config)
            run = self.client.create_run(
                self._experiment_id,
                tags={
                    **{k: redact(v) for k, v in tags.items()},
                    MLFLOW_PARENT_RUN_ID: self.parent_run_id,
                    **self._name(trial),
                    TRIAL_TAG: trial.trial_id,
                    LANGUAGE_TAG: self.language,
                    **({SEARCH_TAG: self.search} if self.search else {}),
                },
            )
            run_id = run.info.run_id
            self._logged[trial.trial_id] = (-1, False)  # a new run: nothing logged yet
            self.writers.submit(
                run_id, "params", lambda: log_params(self.client, run_id, {**params, "language": self.language})
            )
        self._runs[trial.trial_id] = run_id
        return run_id

    def _name(self, trial: Trial) -> dict[str, str]:
        """A new run's name (its language and what the trial varies: ``jav flare fusion=add seed=1``) and its
        one-line description."""
        words = self.label(trial.config) if self.label else ""
        if not words:
            return {MLFLOW_RUN_NAME: f"{self.language}-{trial.trial_id}"}
        return {
            MLFLOW_RUN_NAME: f"{self.language} {words}",
            DESCRIPTION_TAG: (
                f"Trial {trial.trial_id} of search {self.search or self.language}: {words}, on {self.language}; "
                f"{BEST_PREFIX}{self.metric} is its best epoch's {self.metric} ({self.mode}), the score "
                "selection compares."
            ),
        }

    def _best_so_far(self, trial_id: str, result: dict[str, Any]) -> dict[str, float]:
        """The selection's own value of a trial (flare_ray.search.summary.trial_rows): its best ``metric`` over
        the epochs reported so far (the first such epoch on a tie), as ``best/<metric>`` and ``best/epoch``; the
        final result's (its best epoch again) where the trial reported one, unless its epochs logged it already."""
        value = result.get(self.metric)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return {}
        if result.get("final") and isinstance(result.get("best_epoch"), (int, float)):
            best = (float(value), int(result["best_epoch"]))
            if self._best.get(trial_id) == best:  # logged with its epoch already: a step holds one value per metric
                return {}
        else:
            epoch = int(result.get("epoch", result.get("training_iteration", 0)))
            earlier = self._best.get(trial_id)
            better = earlier is None or (value > earlier[0] if self.mode == "max" else value < earlier[0])
            best = (float(value), epoch) if better else earlier
        self._best[trial_id] = best
        return {f"{BEST_PREFIX}{self.metric}": best[0], BEST_EPOCH: float(best[1])}

    def _already_logged(self, run_id: str) -> tuple[int, bool]:
        """What a run made before a resume holds (two requests, once per run): its last epoch step and whether it
        has its final result (its test scores)."""
        steps = [m.step for m in self.client.get_metric_history(run_id, "epoch")]
        metrics = self.client.get_run(run_id).data.metrics
        return max(steps, default=-1), any(key.startswith("test/") for key in metrics)

    def _new(self, trial_id: str, run_id: str, step: int, final: bool) -> bool:
        """Whether a result is not on its run yet (and note it): a restarted trial reports again the epochs its
        checkpoint holds (``replayed``; one whose result was lost in the stop is new here), and one restarted from
        an earlier checkpoint than its last report trains the epochs between again; the run keeps each epoch as
        first logged."""
        if trial_id not in self._logged:  # its run was made before a resume
            self._logged[trial_id] = self._already_logged(run_id)
        last, finished = self._logged[trial_id]
        if finished or (step <= last and not final):
            return False
        self._logged[trial_id] = (max(last, step), final)
        return True

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict, **info) -> None:
        run_id = self.run_id(trial)
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        metrics = _metrics(result)
        if result.get("final"):  # the trial's summary: test scores, time/* (validation curves are already logged)
            metrics = {k: v for k, v in metrics.items() if k.startswith(("test/", "time/")) or k == "best_epoch"}
            self._times.pop(trial.trial_id, None)
        else:  # where the time went so far: kept for the trial's end (one value per run, not a curve)
            times = {k: metrics.pop(k) for k in [k for k in metrics if k.startswith("time/")]}
            if times:
                self._times[trial.trial_id] = (step, times)
        metrics.update(self._best_so_far(trial.trial_id, result))
        tags = [RunTag(tag, result[key]) for key, tag in RESULT_TAGS.items() if isinstance(result.get(key), str)]
        if tags:
            self.writers.submit(run_id, "tags", lambda: self.client.log_batch(run_id, tags=tags))
        if metrics and self._new(trial.trial_id, run_id, step, bool(result.get("final"))):
            now = int(1000 * result.get("timestamp", 0)) or 0
            batch = [Metric(k, v, now, step) for k, v in metrics.items()]
            self.writers.submit(run_id, f"metrics of step {step}", lambda: self.client.log_batch(run_id, metrics=batch))
        if result.get(CHECKPOINT_PATH_KEY):  # every epoch's checkpoint holds the best adapter so far
            self._checkpoints[trial.trial_id] = result[CHECKPOINT_PATH_KEY]  # a Ray Train run's, via Tune
        elif result.get(REPLAYED_CHECKPOINT_KEY):  # where a restarted trial continues from (Tune may not know it)
            self._checkpoints[trial.trial_id] = result[REPLAYED_CHECKPOINT_KEY]

    def on_checkpoint(self, iteration: int, trials: list[Trial], trial: Trial, checkpoint, **info) -> None:
        self._checkpoints[trial.trial_id] = checkpoint.path  # a trial that trained in its own process

    def _finish(self, trial: Trial, status: str) -> None:
        if trial.trial_id not in self._runs:  # a run of this trial from before a resume, or none: it never reported
            found = self._existing(trial.trial_id)
            if found is None:
                return
            self._runs[trial.trial_id] = found
        run_id = self._runs[trial.trial_id]
        path = self._checkpoints.get(trial.trial_id)
        if trial.trial_id in self._times:  # it ended without a final result: where its time went, up to its last
            step, times = self._times.pop(trial.trial_id)
            batch = [Metric(k, v, int(1000 * time.time()), step) for k, v in times.items()]
            self.writers.submit(run_id, "time figures", lambda: self.client.log_batch(run_id, metrics=batch))
        self.writers.submit(run_id, "artifacts and end", lambda: self._end_run(run_id, path, status))

    def _end_run(self, run_id: str, path: str | None, status: str) -> None:
        """The best checkpoint's adapter and predictions as artifacts, where it is, and the run's end."""
        client = self.client
        if path:
            with local_copy(path, self.storage_path) as folder:
                folder = Path(folder)
                for item in sorted(folder.iterdir()):
                    if item.is_file() and item.name != MANIFEST:  # the manifest lists resume/ too: not the adapter's
                        client.log_artifact(run_id, str(item), ADAPTER_PATH)
                if (folder / PREDICTIONS_PATH).is_dir():
                    client.log_artifacts(run_id, str(folder / PREDICTIONS_PATH), PREDICTIONS_PATH)
            client.set_tag(run_id, CHECKPOINT_TAG, checkpoint_uri(path, self.storage_path))
        client.set_terminated(run_id, status=status)

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        self._finish(trial, RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info) -> None:
        # Why, on its MLflow run (the full trace is in the trial's error file); a trial that failed before its
        # first result (e.g. a NaN loss in the first epoch) gets its run here, so every failure is on record.
        run_id, error = self.run_id(trial), redact(trial_error(trial))[:5000]
        self.writers.submit(run_id, "error tag", lambda: self.client.set_tag(run_id, ERROR_TAG, error))
        self._finish(trial, RunStatus.to_string(RunStatus.FAILED))

    def on_experiment_end(self, trials: list[Trial], **info) -> None:
        self.flush()

    def flush(self) -> None:
        """Wait for every write so far (the sweep reads the runs back next); say how many failed."""
        self.writers.wait()
        if self.writers.errors:
            log.warning("%d MLflow write(s) of %s's trials failed (see above)", len(self.writers.errors), self.language)


def checkpoint_uri(path: str, storage_path: str) -> str:
    """A checkpoint's path as Ray reports it, as a URI on remote storage (``s3://bucket/...``, where Ray gives
    the path within the bucket's filesystem); a local path as it is."""
    if "://" in path or not is_remote(storage_path):
        return path
    return f"{storage_path.split('://', 1)[0]}://{path}"


def trial_error(trial: Trial) -> str:
    """What Ray reported about a failed trial, in one line."""
    error = None
    try:  # Tune writes it in the trial's local folder first (and to its storage at the next sync)
        if trial.error_file and Path(trial.error_file).is_file():
            error = Path(trial.error_file).read_text()
        else:
            error = trial.get_error()
    except Exception:  # noqa: BLE001 - the message is best effort; the log has the rest
        pass
    if not error:
        return "no error was recorded"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = next((line for line in reversed(lines) if not line.startswith(("File ", "^", "~"))), type(error).__name__)
    return cause if len(cause) < 300 else cause[:297] + "..."

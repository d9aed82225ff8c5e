"""``flare-ray reproduce RUN_ID``: a recorded trial (a child run) or sweep (a parent run) run again, from MLflow alone.

What a sweep records is enough to run it again: the parent run holds the experiment config (``config.json``),
the git commit, the package versions, the data provenance per language, the hardware of its driver and the
stage-1 folder with its fingerprint; each child run its language, seed and what it varied besides the seed
(the ``flare_ray.configuration`` tag). From these:

* :func:`read_recorded` reads a run's records (:class:`Recorded`), :func:`read_current` the same of this
  checkout and machine, and :func:`differences` says what differs (commit, packages, data, hardware) before
  anything runs;
* :func:`reproduction_config` builds the sweep that runs it again: a child run's trial as a one-trial sweep of its
  language, values and seed (no grid, space or ablation), a parent's the same sweep; under a new name
  (``<sweep>-reproduce-<run id[:8]>``, so new Tune folders) in the original MLflow experiment, reusing the
  recorded stage-1 folder where it is still there and its files match their hashes, else training it again;
* :func:`compare` sets the reproduced trials beside the originals: each epoch's validation scores and the test
  scores, equal when they agree to 4 decimals (what the same seed on CPU gives).

The sweep itself runs through the normal path (``flare-ray tune``'s), so the console, MLflow and storage behave
as for any sweep; the CLI (:mod:`flare_ray.cli.reproduce`) tags its runs ``flare_ray.reproduces=<run id>``.
"""

from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

from flare_ray.configfile import set_path
from flare_ray.experiment import ExperimentConfig, validate_experiment
from flare_ray.secrets import has_password
from flare_ray.storage import local_folder
from flare_ray.tracking import mlflow_runs
from flare_ray.tracking.mlflow_runs import CONFIGURATION_TAG, LANGUAGE_TAG, SEED_TAG, SWEEP_TAG, TRIAL_TAG

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the console is for what differs

REPRODUCES_TAG = "flare_ray.reproduces"  # on a reproduction's runs: the run id it reproduces
PLACES = 4  # equal to 4 decimals: what the same seed on CPU gives (scores in percent)


class RunNotReproducible(ValueError):
    """The run id names no run of the store, or a run that no sweep of this project recorded."""


@dataclass
class Recorded:
    """What a sweep recorded about a run (``trial``: a child run; else a parent run, the whole sweep)."""

    run_id: str
    parent_id: str
    experiment_name: str
    sweep: str
    config: dict[str, Any]  # the experiment config as the sweep started it (the parent run's config.json)
    commit: str
    versions: dict[str, str]
    provenance: dict[str, Any]
    hardware: dict[str, Any] | None  # None: recorded before sweeps recorded it
    stage1: dict[str, str] = field(default_factory=dict)  # path, fingerprint (model.stage1: auto)
    trial: bool = False
    language: str | None = None  # a trial's
    configuration: dict[str, Any] = field(default_factory=dict)  # what a trial varied besides its seed
    seed: int | None = None  # a trial's training.seed


@dataclass
class Current:
    """The same of this checkout and machine."""

    commit: str
    versions: dict[str, str]
    provenance: dict[str, Any]
    hardware: dict[str, Any]


@dataclass
class Difference:
    """One thing that differs between the run's records and now."""

    what: str  # commit, version.torch, data.jav, hardware.gpus, ...
    recorded: Any
    now: Any

    def line(self) -> str:
        return f"  {self.what}: recorded {_short(self.recorded)}, now {_short(self.now)}"


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 100 else text[:97] + "..."


def read_recorded(client: MlflowClient, run_id: str) -> Recorded:
    """The records of ``run_id`` (a child run: its trial; a parent run: its sweep). Raises
    :class:`RunNotReproducible` naming the run where the store has no such run or no sweep recorded it."""
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise RunNotReproducible(f"no run {run_id!r} in the MLflow store {client.tracking_uri}") from None
    tags = run.data.tags
    trial = TRIAL_TAG in tags and MLFLOW_PARENT_RUN_ID in tags
    if not trial and SWEEP_TAG not in tags:
        raise RunNotReproducible(
            f"run {run_id} is neither a sweep's parent run (tag {SWEEP_TAG}) nor one of its trials' runs (tag "
            f"{TRIAL_TAG}): flare-ray reproduce runs again what `flare-ray tune` recorded"
        )
    parent = client.get_run(tags[MLFLOW_PARENT_RUN_ID]) if trial else run
    ptags = parent.data.tags
    config = _artifact_json(client, parent.info.run_id, "config.json")
    if config is None:
        raise RunNotReproducible(f"the sweep's parent run {parent.info.run_id} has no config.json to run it from")
    seed = tags.get(SEED_TAG)
    return Recorded(
        run_id=run_id,
        parent_id=parent.info.run_id,
        experiment_name=client.get_experiment(parent.info.experiment_id).name,
        sweep=ptags[SWEEP_TAG],
        config=config,
        commit=ptags.get("git_commit", "unknown"),
        versions={k.removeprefix("version."): v for k, v in ptags.items() if k.startswith("version.")},
        provenance=_artifact_json(client, parent.info.run_id, "data_provenance.json") or {},
        hardware=_artifact_json(client, parent.info.run_id, mlflow_runs.HARDWARE_PATH),
        stage1={k: ptags[f"stage1.{k}"] for k in ("path", "fingerprint") if f"stage1.{k}" in ptags},
        trial=trial,
        language=tags.get(LANGUAGE_TAG) if trial else None,
        configuration=json.loads(tags.get(CONFIGURATION_TAG, "{}")) if trial else {},
        seed=int(seed) if trial and seed not in (None, "None") else None,
    )


def _artifact_json(client: MlflowClient, run_id: str, path: str) -> Any:
    """A run's JSON artifact, None where it has none."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except (MlflowException, OSError):
            return None
        return json.loads(Path(local).read_text())


def read_current(config: ExperimentConfig) -> Current:
    """This checkout's commit, the installed versions, the data provenance of ``config``'s languages as this
    checkout reads them, and this machine's hardware."""
    from flare_ray.tasks import get_task

    provenance = {lang: get_task(config.task.task_config(lang)).provenance() for lang in config.task.languages}
    return Current(mlflow_runs.git_commit(), mlflow_runs.versions(), provenance, mlflow_runs.hardware())


def differences(recorded: Recorded, current: Current) -> list[Difference]:
    """What differs between the run's records and now: the commit, each package's version, each language's data
    provenance, the hardware (not recorded: a difference too, since nothing says it was the same)."""
    out = []
    if recorded.commit != current.commit:
        out.append(Difference("commit", recorded.commit, current.commit))
    for name in sorted(set(recorded.versions) | set(current.versions)):
        was, now = recorded.versions.get(name, "not recorded"), current.versions.get(name, "not recorded")
        if was != now:
            out.append(Difference(f"version.{name}", was, now))
    for language, now in sorted(current.provenance.items()):
        was = recorded.provenance.get(language, "not recorded")
        if _plain(was) != _plain(now):
            out.append(Difference(f"data.{language}", was, now))
    if recorded.hardware is None:
        out.append(Difference("hardware", "not recorded", current.hardware))
    else:
        for key in sorted(set(recorded.hardware) | set(current.hardware)):
            was, now = recorded.hardware.get(key), current.hardware.get(key)
            if was != now:
                out.append(Difference(f"hardware.{key}", was, now))
    return out


def _plain(value: Any) -> Any:
    """As JSON reads it back (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def hardware_differs(found: list[Difference]) -> bool:
    return any(d.what.startswith("hardware") for d in found)


def reproduction_name(client: MlflowClient, recorded: Recorded, storage_path: str) -> str:
    """``<sweep>-reproduce-<run id[:8]>`` (then ``-2``, ``-3``, ...): a name no sweep of the experiment has and no
    Tune folder under ``storage_path`` starts with."""
    base = f"{recorded.sweep}-reproduce-{recorded.run_id[:8]}"
    experiment = client.get_experiment_by_name(recorded.experiment_name)
    folder = local_folder(storage_path)
    for n in range(1, 1000):
        name = base if n == 1 else f"{base}-{n}"
        taken = experiment is not None and mlflow_runs.find_run(client, experiment.experiment_id, {SWEEP_TAG: name})
        if not taken and not (folder is not None and any(folder.glob(f"{name}-*"))):
            return name
    raise RuntimeError(f"no free name for a reproduction of {recorded.run_id} in {recorded.experiment_name}")


def stage1_reuse(recorded: Recorded) -> tuple[str | None, str]:
    """The recorded stage-1 folder where it is still there and its files match their hashes (None: train it
    again), and a line that says which."""
    from flare_ray.experiment.checks import stage1_folder_problem

    path = recorded.stage1.get("path")
    if recorded.config.get("model", {}).get("stage1") != "auto":
        return None, "stage 1: as the config names it (model.stage1)"
    if not path:
        return None, "stage 1: none recorded; model.stage1: auto trains it"
    if local_folder(path) is None:
        return None, f"stage 1: the recorded folder {path} is remote; model.stage1: auto reuses or trains it"
    folder = Path(path)
    problem = (
        f"{path} is missing" if not (folder / "adapter_model.safetensors").is_file() else stage1_folder_problem(folder)
    )
    if problem is not None:
        return None, f"stage 1: the recorded folder cannot be reused ({problem}); model.stage1: auto trains it again"
    return path, f"stage 1: reusing the recorded folder {path} (fingerprint {recorded.stage1.get('fingerprint')})"


def reproduction_config(
    recorded: Recorded, name: str, tracking_uri: str, stage1: str | None = None
) -> ExperimentConfig:
    """The sweep that runs ``recorded`` again, validated: a trial's as a one-trial sweep of its language, values
    and seed (no grid, space, ablation or scheduler; no report baseline: one row), a sweep's as recorded;
    named ``name`` in the original MLflow experiment of ``tracking_uri``; ``stage1``: the folder to start
    from (None: as recorded)."""
    data = copy.deepcopy(recorded.config)
    data["name"] = name
    tracking = data.setdefault("tracking", {})
    tracking["experiment_name"] = recorded.experiment_name
    if not has_password(tracking_uri):  # a URI with a password comes from $MLFLOW_TRACKING_URI, which wins anyway
        tracking["tracking_uri"] = tracking_uri
    if stage1 is not None:
        data["model"]["stage1"] = stage1
    if recorded.trial:
        data["task"]["languages"] = [recorded.language]
        for key, value in recorded.configuration.items():
            set_path(data, key.split("."), copy.deepcopy(value))
        if recorded.seed is not None:
            set_path(data, ["training", "seed"], recorded.seed)
        search = data["search"]
        search.update(grid={}, space={}, ablation=None, seeds=None, scheduler=None, num_samples=1)
        data.setdefault("report", {})["baseline"] = None
    return validate_experiment(data, source=f"the config recorded on run {recorded.run_id}")


def trial_runs(client: MlflowClient, recorded: Recorded) -> list:
    """The original trials' runs: a child run's own, or every trial of a parent run."""
    if recorded.trial:
        return [client.get_run(recorded.run_id)]
    experiment_id = client.get_run(recorded.parent_id).info.experiment_id
    return mlflow_runs.child_runs(client, experiment_id, recorded.parent_id)


def trial_key(run) -> tuple[str, str, str]:
    """What a trial is, whatever its run: its language, its values besides the seed, its seed."""
    tags = run.data.tags
    return tags.get(LANGUAGE_TAG, ""), tags.get(CONFIGURATION_TAG, "{}"), tags.get(SEED_TAG, "")


def curves(client: MlflowClient, run) -> dict[tuple[str, int], float]:
    """A trial's scores to compare: each epoch's ``validation/*`` value (key, epoch) and each ``test/*`` score
    (key, -1)."""
    out: dict[tuple[str, int], float] = {}
    for key in run.data.metrics:
        if key.startswith("validation/"):
            for m in client.get_metric_history(run.info.run_id, key):
                out[(key, m.step)] = m.value
        elif key.startswith("test/"):
            out[(key, -1)] = run.data.metrics[key]
    return out


@dataclass
class Row:
    """One score of one trial, original beside reproduced (None: that side has none)."""

    trial: str
    metric: str
    epoch: int  # -1: a test score
    original: float | None
    reproduced: float | None

    @property
    def equal(self) -> bool:
        if self.original is None or self.reproduced is None:
            return False
        both_nan = math.isnan(self.original) and math.isnan(self.reproduced)
        return both_nan or round(self.original, PLACES) == round(self.reproduced, PLACES)


@dataclass
class Comparison:
    """The reproduced trials beside the originals."""

    rows: list[Row]
    missing: list[str] = field(default_factory=list)  # original trials with no reproduced run

    @property
    def equal(self) -> bool:
        return not self.missing and bool(self.rows) and all(r.equal for r in self.rows)

    def table(self, only_different: bool = False) -> str:
        """The scores as a text table (``only_different``: the rows that differ)."""
        rows = [r for r in self.rows if not (only_different and r.equal)]
        head = ("trial", "metric", "epoch", "original", "reproduced", "Δ")
        body = [
            (
                r.trial,
                r.metric,
                "test" if r.epoch < 0 else str(r.epoch),
                _num(r.original),
                _num(r.reproduced),
                _num(r.reproduced - r.original if r.original is not None and r.reproduced is not None else None, "+"),
            )
            for r in rows
        ]
        widths = [max(len(x) for x in column) for column in zip(head, *body)]
        lines = [_line(head, widths)] + [_line(line, widths) for line in body]
        return "\n".join(lines + [f"(no reproduced run of {m})" for m in self.missing])


def _line(cells, widths) -> str:
    return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()


def _num(value: float | None, sign: str = "") -> str:
    return "-" if value is None else f"{value:{sign}.{PLACES}f}"


def compare(client: MlflowClient, originals: list, reproduced: list) -> Comparison:
    """Each original trial's scores beside those of the reproduced trial with the same language, values and seed
    (one trial beside one: each other's, as a trial reproduced alone varies nothing)."""
    by_key = {trial_key(run): run for run in reproduced}
    if len(originals) == 1 and len(reproduced) == 1:
        by_key = {trial_key(originals[0]): reproduced[0]}
    rows, missing = [], []
    for run in sorted(originals, key=lambda r: (trial_key(r), r.info.run_name or "")):
        label = run.info.run_name or run.info.run_id
        twin = by_key.get(trial_key(run))
        if twin is None:
            missing.append(label)
            continue
        mine, theirs = curves(client, run), curves(client, twin)
        for key in sorted(set(mine) | set(theirs), key=lambda k: (k[1] < 0, k[0], k[1])):
            rows.append(Row(label, key[0], key[1], mine.get(key), theirs.get(key)))
    return Comparison(rows, missing)


def reproduction_parent(client: MlflowClient, recorded: Recorded, name: str) -> str | None:
    """The parent run of the reproduction ``name`` (None: its sweep made none)."""
    experiment = client.get_experiment_by_name(recorded.experiment_name)
    found = experiment and mlflow_runs.find_run(client, experiment.experiment_id, {SWEEP_TAG: name})
    return found.info.run_id if found else None


def tag_reproduction(client: MlflowClient, parent: str, run_id: str) -> list:
    """Tag a reproduction's parent run and its trials' runs ``flare_ray.reproduces=<run_id>``; its trials' runs."""
    experiment_id = client.get_run(parent).info.experiment_id
    children = mlflow_runs.child_runs(client, experiment_id, parent)
    for run in [client.get_run(parent), *children]:
        client.set_tag(run.info.run_id, REPRODUCES_TAG, run_id)
    return children


def on_cpu(config: ExperimentConfig) -> bool:
    """Do the trials train on CPU (where the same seed gives the same scores)?"""
    return not config.scaling.use_gpu

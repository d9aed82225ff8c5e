"""Seeds where they decide something (``search.seeds: {min, max}``): a grid's (or an ablation's) cells run more
seeds only while their comparison with the best cell is still undecided.

Every cell runs the first ``min`` seeds. Then, round by round, once every trial of the round has ended
(:func:`decide`): the current best cell is the one with the best mean validation score over its seeds (the
sweep's own rule, :func:`flare_ray.selection.best_configuration`); every other cell is compared with it by the
paired bootstrap over the validation examples, seeds pooled (:func:`flare_ray.significance.difference` on the
per-example predictions of each trial's best epoch, ``predictions/validation.parquet`` in its latest
checkpoint). A cell whose 95 % interval of the difference contains 0 is undecided and gets the next seed; the
best cell gets it too whenever some cell is undecided against it (that comparison is its own as well). A cell
that ran ``max`` seeds gets no more; the search ends when a round gives no seed.

:class:`AdaptiveCells` is that searcher (the trial configs of :class:`~flare_ray.search.searches.GridCells`,
``{GRID_CELL: cell, "training.seed": seed}``, each with why it runs, :data:`SEED_REASON`, which becomes the
child run's ``flare_ray.seed_reason`` tag). It needs each finished trial's checkpoint, which Tune hands to
callbacks, not searchers: :class:`SeedCheckpoints`, a callback on the same search, passes it on. Each round's
decisions (the cells, Δ against the best with its interval, who got a seed and why) are written to
``seeds.json`` in the search's folder, which the sweep logs on its parent run. Its state (the trials, their
scores and checkpoints, the rounds) is saved as JSON with the search's for ``--resume``.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import pandas as pd
from ray.tune import Callback
from ray.tune.integration.ray_train import CHECKPOINT_PATH_KEY
from ray.tune.search import Searcher

from flare_ray.experiment.config import AblationSpec, AdaptiveSeeds
from flare_ray.selection import best_configuration
from flare_ray.significance import Difference, difference
from flare_ray.storage import exists, join, local_copy, read_text, write_text
from flare_ray.tracking.callback import REPLAYED_CHECKPOINT_KEY

from .searches import GRID_CELL, SEED_REASON, Search, search_path

log = logging.getLogger(__name__)

SEEDS_FILE = "seeds.json"  # each round's decisions, in the search's folder (and on the parent run)
PREDICTIONS = ("predictions", "validation.parquet")  # in a checkpoint: its best epoch's validation predictions


@dataclass
class Decision:
    """One round's decision: the best cell, every other cell's difference from it (where it has predictions),
    and the cells that get the next seed with why."""

    best: int
    differences: dict[int, Difference] = field(default_factory=dict)
    given: dict[int, str] = field(default_factory=dict)


def undecided(d: Difference) -> bool:
    """Whether a difference's interval contains 0: the comparison is not decided yet."""
    return d.low <= 0.0 <= d.high


def decide(
    frames: Sequence[Sequence[pd.DataFrame]],
    scores: Sequence[Sequence[float]],
    runs: Sequence[int],
    *,
    maximum: int,
    metric: str,
    mode: str = "max",
    labels: Sequence[str] = (),
    names: Sequence[str] | None = None,
) -> Decision:
    """Which cells get the next seed. Per cell: ``frames``, the per-example validation predictions of its finished
    seeds; ``scores``, their validation scores (the search metric at the best epoch); ``runs``, how many seeds it
    ran (failed ones too: a seed is not run twice). ``metric``: the per-example metric (``accuracy``, ...). A cell
    with no finished seed is neither best nor compared."""
    names = list(names) if names is not None else [f"cell {i}" for i in range(len(frames))]
    rows = [{"configuration": str(i), "validation": s} for i, cell in enumerate(scores) for s in cell]
    if not rows:
        raise ValueError("no cell has a finished seed to compare")
    chosen, _ = best_configuration(pd.DataFrame(rows), mode)
    best = int(chosen)
    decision = Decision(best)
    for cell, cell_frames in enumerate(frames):
        if cell == best or not cell_frames:
            continue
        d = difference(list(cell_frames), list(frames[best]), metric, labels)
        decision.differences[cell] = d
        if undecided(d) and runs[cell] < maximum:
            decision.given[cell] = (
                f"undecided against the best cell ({names[best]}): Δ {d.delta:+.2f} [{d.low:+.2f}, {d.high:+.2f}] "
                f"after {runs[cell]} seeds"
            )
    open_ = sum(undecided(d) for d in decision.differences.values())
    if open_ and runs[best] < maximum:
        decision.given[best] = f"the best cell: {open_} cell{'s' if open_ != 1 else ''} undecided against it"
    return decision


def cell_name(cell: dict[str, Any], ablation: AblationSpec | None = None) -> str:
    """A cell in a few words: ``kind=flare fusion=add``; in an ablation its arm, with a grid's values."""
    words = []
    if ablation is not None:
        key, is_arm, value = ablation.arm_of(cell).partition("=")  # baseline, or method.flare.fusion=add
        words.append(f"{key.rsplit('.', 1)[-1]}={value}" if is_arm else key)
        cell = {k: v for k, v in cell.items() if k not in ablation.keys}
    words += [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in cell.items()]
    return " ".join(words) or "the config"


class AdaptiveCells(Searcher):
    """The cells of a search with adaptive seeds (module docstring), suggested round by round: ``None`` while a
    round's trials still run, ``FINISHED`` after a round that gives no seed. ``folder``: the search's folder
    (``seeds.json``); ``storage_path``: where a checkpoint path as Ray reports it lives."""

    CKPT_FILE_TMPL = "searcher-state-{}.json"

    def __init__(
        self,
        cells: list[dict[str, Any]],
        seeds: AdaptiveSeeds,
        metric: str,
        mode: str = "max",
        *,
        folder: str | None = None,
        storage_path: str | None = None,
        ablation: AblationSpec | None = None,
    ) -> None:
        super().__init__()
        self.cells, self.spec, self.search_metric, self.search_mode = cells, seeds, metric, mode
        self.folder, self.storage_path = folder, storage_path
        self.names = [cell_name(cell, ablation) for cell in cells]
        # trial id -> {cell, seed, reason, done, error, score, checkpoint}
        self.trials: dict[str, dict[str, Any]] = {}
        self.queue: list[tuple[int, int, str]] = [
            (cell, seeds.seeds[k], f"seed {k + 1} of the first {seeds.min} (search.seeds.min)")
            for k in range(seeds.min)
            for cell in range(len(cells))
        ]
        self.rounds: list[dict[str, Any]] = []
        self.finished = False

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True  # the configs are the cells'; the metric is the search's, given here

    def runs(self, cell: int) -> int:
        """How many seeds ``cell`` was given so far (running, finished or failed)."""
        return sum(t["cell"] == cell for t in self.trials.values())

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        if self.finished:
            return Searcher.FINISHED
        if not self.queue:
            if any(not t["done"] for t in self.trials.values()):
                return None  # the round's trials still run: its decision waits for them
            self._decide()
            if self.finished:
                return Searcher.FINISHED
        cell, seed, reason = self.queue.pop(0)
        self.trials[trial_id] = {"cell": cell, "seed": seed, "reason": reason, "done": False, "error": False}
        self.trials[trial_id].update(score=None, checkpoint=None)
        return {GRID_CELL: copy.deepcopy(self.cells[cell]), "training.seed": seed, SEED_REASON: reason}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        trial = self.trials.get(trial_id)
        if trial is None:
            return
        value = result.get(self.search_metric)
        if isinstance(value, (int, float)) and value == value:  # (not NaN)
            earlier = trial["score"]
            if earlier is None or (value > earlier if self.search_mode == "max" else value < earlier):
                trial["score"] = float(value)
        path = result.get(CHECKPOINT_PATH_KEY) or result.get(REPLAYED_CHECKPOINT_KEY)
        if path:  # a Ray Train run's checkpoint (a trial in its own process: SeedCheckpoints)
            trial["checkpoint"] = path

    def note_checkpoint(self, trial_id: str, path: str) -> None:
        """A trial's latest checkpoint (it holds the best epoch's adapter and validation predictions)."""
        if trial_id in self.trials:
            self.trials[trial_id]["checkpoint"] = path

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        trial = self.trials.get(trial_id)
        if trial is None:
            return
        if result:
            self.on_trial_result(trial_id, result)
        trial.update(done=True, error=bool(error))
        # The round's last trial: decide now where every finished trial's checkpoint is known (else at the next
        # suggestion). Tune stops asking once the most trials the plan allows were made: the last round's
        # decision (no more seeds) is recorded all the same.
        if not self.queue and not self.finished and all(t["done"] for t in self.trials.values()):
            if all(t["error"] or t["checkpoint"] for t in self.trials.values()):
                self._decide()

    def _decide(self) -> None:
        """The round's decision: queue its trials, or finish the search where it gives no seed."""
        self._next_round()
        if not self.queue:
            self.finished = True
            self._write()

    def _predictions(self, trial: dict[str, Any]) -> pd.DataFrame | None:
        if trial["error"] or trial["score"] is None or not trial["checkpoint"]:
            return None
        try:
            with local_copy(join(trial["checkpoint"], PREDICTIONS[0]), self.storage_path) as folder:
                return pd.read_parquet(join(folder, PREDICTIONS[1]))
        except (OSError, FileNotFoundError) as err:
            log.warning("no validation predictions in %s (%s): the seed is left out", trial["checkpoint"], err)
            return None

    def _next_round(self) -> None:
        """Decide who gets the next seed (:func:`decide`), queue their trials and record the round."""
        frames: list[list[pd.DataFrame]] = [[] for _ in self.cells]
        scores: list[list[float]] = [[] for _ in self.cells]
        for trial in self.trials.values():
            frame = self._predictions(trial)
            if frame is not None:
                frames[trial["cell"]].append(frame)
                scores[trial["cell"]].append(trial["score"])
        runs = [self.runs(cell) for cell in range(len(self.cells))]
        if not any(scores):
            self.rounds.append({"round": len(self.rounds) + 1, "note": "no cell has a finished seed"})
            return
        metric = self.search_metric.partition("/")[2]
        decision = decide(
            frames, scores, runs, maximum=self.spec.max, metric=metric, mode=self.search_mode, names=self.names
        )
        for cell, reason in decision.given.items():
            self.queue.append((cell, self.spec.seeds[runs[cell]], reason))
        self.queue.sort()
        self.rounds.append(
            {
                "round": len(self.rounds) + 1,
                "best": self.names[decision.best],
                "cells": [
                    {
                        "cell": self.cells[i],
                        "name": self.names[i],
                        "seeds": runs[i],
                        "mean": sum(scores[i]) / len(scores[i]) if scores[i] else None,
                        **(
                            {"delta": d.delta, "low": d.low, "high": d.high, "p": d.p}
                            if (d := decision.differences.get(i))
                            else {}
                        ),
                        "next_seed": decision.given.get(i),
                    }
                    for i in range(len(self.cells))
                ],
            }
        )
        self._write()

    def report(self) -> dict[str, Any]:
        """What ``seeds.json`` holds: the rule, each round's decisions, each trial and why it ran."""
        return {
            "min": self.spec.min,
            "max": self.spec.max,
            "seeds": self.spec.seeds,
            "metric": self.search_metric,
            "finished": self.finished,
            "rounds": self.rounds,
            "trials": {i: {k: t[k] for k in ("cell", "seed", "reason", "score")} for i, t in self.trials.items()},
        }

    def _write(self) -> None:
        if self.folder is None:
            return
        try:
            write_text(join(self.folder, SEEDS_FILE), json.dumps(self.report(), indent=1, default=str))
        except OSError as err:  # the decisions are also in the searcher's state: the search goes on
            log.warning("could not write %s in %s: %s", SEEDS_FILE, self.folder, err)

    def get_state(self) -> dict[str, Any]:
        return {
            "trials": self.trials,
            "queue": self.queue,
            "rounds": self.rounds,
            "finished": self.finished,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.trials = state["trials"]
        self.queue = [tuple(item) for item in state["queue"]]
        self.rounds, self.finished = state["rounds"], state["finished"]

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "w") as f:
            json.dump(self.get_state(), f)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path) as f:
            self.set_state(json.load(f))


class SeedCheckpoints(Callback):
    """Hands each trial's latest checkpoint to its search's :class:`AdaptiveCells` (Tune tells callbacks, not
    searchers, of a trial's own checkpoints)."""

    def __init__(self, searcher: AdaptiveCells) -> None:
        self.searcher = searcher

    def on_checkpoint(self, iteration: int, trials: list, trial, checkpoint, **info) -> None:
        self.searcher.note_checkpoint(trial.trial_id, checkpoint.path)


def adaptive_searcher(search_alg: Any) -> AdaptiveCells | None:
    """The :class:`AdaptiveCells` inside a search algorithm's wrappers (``InOrder``, ``ConcurrencyLimiter``)."""
    while search_alg is not None and not isinstance(search_alg, AdaptiveCells):
        search_alg = getattr(search_alg, "searcher", None)
    return search_alg


def ended_early(search: Search) -> bool:
    """Whether a search with adaptive seeds ended before its ``max`` seeds per cell: its last round gave no seed
    (``seeds.json`` says it finished)."""
    if search.config.search.adaptive_seeds is None:
        return False
    path = join(search_path(search), SEEDS_FILE)
    try:
        return exists(path) and bool(json.loads(read_text(path)).get("finished"))
    except (OSError, ValueError):
        return False


def log_decisions(client, parent: str, search: Search) -> None:
    """Log a search's ``seeds.json`` (adaptive seeds: each round's decisions) on the sweep's parent run, as
    ``seeds/<search>.json``; nothing for a search without adaptive seeds."""
    if search.config.search.adaptive_seeds is None:
        return
    path = join(search_path(search), SEEDS_FILE)
    try:
        if exists(path):
            client.log_text(parent, read_text(path), f"seeds/{search.name}.json")
    except Exception as err:  # noqa: BLE001 - the sweep's results stand without this record on MLflow
        log.warning("could not log %s's seed decisions on the parent run: %s", search.name, err)

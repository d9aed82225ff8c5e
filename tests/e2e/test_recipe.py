"""The trial recipe learns what it should.

1. The project's own ``lora`` trial (Ray Train, the real loop) and a minimal hand-written peft
   loop (no project code in its training path), same tiny model, data, seed, settings and data
   order, end within 2 % of each other's final training loss and 2 points of validation score.
2. On a task where only the English source carries the label, a FLARE trial reaches near-perfect
   accuracy while a LoRA trial stays near chance.
3. Seeds are honest: the same seed gives the same curve, another seed a different one.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

import pytest

from flare_ray.experiment import ExperimentConfig
from tests.helpers import REPO
from tests.sweeps import LORA, SETTINGS, minimal_peft_loop, run_trial

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def config(tmp_path, kind: str, task: dict, **training) -> ExperimentConfig:
    return ExperimentConfig.model_validate(
        {
            "name": "recipe",
            "storage_path": str(tmp_path),
            "model": {"name_or_path": "tiny:xlm-roberta", "stage1": None},
            "task": {"name": "nusax", "languages": ["jav"], **task},
            "method": {"kind": kind, "lora": LORA},
            "training": {**SETTINGS, **training},
            "scaling": {"cpus_per_worker": 1},
        }
    )


def test_lora_trial_matches_a_minimal_peft_loop(tmp_path, local_ray):
    experiment = config(tmp_path, "lora", {"max_records": {"train": 320, "validation": 100, "test": 50}})
    reports = run_trial(experiment, tmp_path, "lora")
    epochs = [r for r in reports if not r.get("final")]
    trial_losses = [r["train/loss"] for r in epochs]
    minimal_losses, minimal_f1 = minimal_peft_loop(experiment)
    print(
        f"training loss per epoch: trial {[round(x, 4) for x in trial_losses]}, "
        f"minimal loop {[round(x, 4) for x in minimal_losses]}"
    )
    print(
        f"validation macro-F1 after the last epoch: trial {epochs[-1]['validation/macro_f1']:.2f}, "
        f"minimal loop {minimal_f1:.2f}"
    )
    assert trial_losses[-1] < 0.9 * trial_losses[0], "the trial must learn (its training loss falls)"
    assert abs(trial_losses[-1] - minimal_losses[-1]) <= 0.02 * minimal_losses[-1]
    assert abs(epochs[-1]["validation/macro_f1"] - minimal_f1) <= 2.0


def source_only_data(root: Path, seed: int = 0) -> Path:
    """NusaX-shaped CSVs: the English side names the label ("good", "fine" or "bad", then random
    words); the target side is random words, independent of the label."""
    rng = random.Random(seed)
    words = sorted(
        {
            w
            for w in (REPO / "flare_ray" / "models" / "corpus" / "corpus.txt").read_text().lower().split()
            if w.isalpha() and 3 <= len(w) <= 8
        }
        - {"good", "fine", "bad"}
    )[:400]
    markers = {"positive": "good", "neutral": "fine", "negative": "bad"}
    for split, n in (("train", 480), ("valid", 120), ("test", 120)):
        rows = []
        for i in range(n):
            label = rng.choice(list(markers))
            english = [markers[label], *rng.sample(words, 6)]
            rows.append((f"{split}{i}", label, " ".join(english), " ".join(rng.sample(words, 7))))
        for language, column in (("english", 2), ("javanese", 3)):
            folder = root / "sentiment" / language
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / f"{split}.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["id", "text", "label"])
                writer.writerows((row[0], row[column], row[1]) for row in rows)
    return root


def test_flare_trial_learns_a_label_only_the_source_carries(tmp_path, local_ray):
    data = source_only_data(tmp_path / "data")
    scores = {}
    for kind in ("flare", "lora"):
        experiment = config(tmp_path, kind, {"data_dir": str(data)}, epochs=6, learning_rate=5e-3)
        final = run_trial(experiment, tmp_path, kind)[-1]
        scores[kind] = final["test/accuracy"]
    print(f"test accuracy: FLARE {scores['flare']:.1f} vs LoRA {scores['lora']:.1f} (chance 33.3)")
    assert scores["flare"] > 95.0
    assert scores["lora"] < 45.0


def test_seeds_are_honest(tmp_path, local_ray):
    task = {"max_records": {"train": 96, "validation": 32, "test": 16}}
    curves = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        reports = run_trial(config(tmp_path, "flare", task, epochs=2, seed=seed), tmp_path, f"seed-{name}")
        curves[name] = [(r["train/loss"], r["validation/loss"]) for r in reports if not r.get("final")]
    assert curves["a"] == curves["b"], "the same seed must give the same curve on CPU"
    assert curves["a"] != curves["c"], "another seed must give another curve"

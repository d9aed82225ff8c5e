"""Padding among the positions an epoch's training batches make the model compute, plain shuffle against
``training.group_by_length`` (issue 31's ``padding`` row): pure data-loader arithmetic, no model, seconds.

    python benchmarks/padding.py                # prints the table; --results FILE appends it there too

NusaX Javanese's training split as a trial reads it (``max_length`` 128), encoded by the trial's own loader
(:func:`flare_ray.training.setup.train_loader`) with the tokenizers the project ships offline: the tiny
XLM-R's (an encoder's task-head batches) and the tiny Llama's (a decoder's prompt, answer and eos). Both are
byte-level BPEs of 2048 tokens trained on the shipped corpus, so rows are longer in tokens than with the real
tokenizers; the fractions, not the token counts, are the figure. LoRA's batches carry the target side; FLARE's
the source side too (counted like the target's). Every epoch is seeded: the figure is the mean of ``--epochs``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))

SETTINGS = [("xlm-roberta", 64), ("xlm-roberta", 32), ("llama", 32)]  # (tiny tokenizer, batch size)


def epoch_fractions(records, encoder, batch_size: int, grouped: bool, epochs: int, seed: int = 42) -> float:
    """The mean over ``epochs`` of an epoch's padding fraction with one worker."""
    from flare_ray.experiment.training import TrainingSpec
    from flare_ray.training.engine import padding_fraction
    from flare_ray.training.setup import train_loader

    training = TrainingSpec(batch_size=batch_size, group_by_length=grouped, seed=seed)
    loader = train_loader(records, encoder, training, rank=0, world=1)
    fractions = []
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        fractions.append(padding_fraction(loader))
    return sum(fractions) / len(fractions)


def measure(epochs: int = 2) -> list[dict]:
    """One row per (tokenizer, batch size, method): the padding fraction, plain and grouped."""
    from transformers import AutoTokenizer

    from flare_ray.models.tiny import FAMILIES, tiny_model_path
    from flare_ray.tasks import get_task
    from flare_ray.tasks.encoding import TaskEncoder

    task = get_task({"name": "nusax", "language": "jav"})
    records = list(task.load("train"))
    rows = []
    for arch, batch_size in SETTINGS:
        tokenizer = AutoTokenizer.from_pretrained(tiny_model_path(arch))
        for method, source in (("LoRA", False), ("FLARE", True)):
            encoder = TaskEncoder(task, tokenizer, FAMILIES[arch], 128, source=source)
            plain, grouped = (epoch_fractions(records, encoder, batch_size, g, epochs) for g in (False, True))
            row = {"tokenizer": arch, "batch": batch_size, "method": method, "plain": plain, "grouped": grouped}
            rows.append(row | {"records": len(records), "epochs": epochs})
    return rows


def table(rows: list[dict]) -> str:
    """The rows of :func:`measure` as a Markdown table, with what they were measured on."""
    lines = [
        f"Padding among the computed positions: NusaX jav train ({rows[0]['records']} rows), max_length 128, one "
        f"worker, seed 42, mean of epochs 1-{rows[0]['epochs']}:",
        "",
        "| tokenizer (tiny, offline) | batch | method | plain shuffle | group_by_length |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['tokenizer']} | {r['batch']} | {r['method']} | {100 * r['plain']:.1f} % | {100 * r['grouped']:.1f} % |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="seeded epochs per figure (their mean)")
    parser.add_argument("--results", type=Path, default=Path("-"), help="append the table here (-: print only)")
    args = parser.parse_args(argv)
    from common import report

    report(table(measure(args.epochs)), args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

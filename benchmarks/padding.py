"""Padding among the positions an epoch's training batches make the model compute, plain shuffle against
``training.group_by_length`` (transformers' window, and a larger one) and, for decoders, ``training.padding_free``
(issue 31's ``padding`` row): pure data-loader arithmetic, no model, seconds.

    python benchmarks/padding.py                # prints the table; --results FILE appends it there too
    python benchmarks/padding.py --window 4     # the larger window's batches (default 8)

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


def epoch_fractions(
    records, encoder, batch_size: int, grouped: bool | int, epochs: int, seed: int = 42, **training
) -> float:
    """The mean over ``epochs`` of an epoch's padding fraction with one worker (``training``: more of the
    training section, e.g. ``padding_free``)."""
    from flare_ray.experiment.training import TrainingSpec
    from flare_ray.training.engine import padding_fraction
    from flare_ray.training.setup import train_loader

    training = TrainingSpec(batch_size=batch_size, group_by_length=grouped, seed=seed, **training)
    loader = train_loader(records, encoder, training, rank=0, world=1)
    fractions = []
    for epoch in range(1, epochs + 1):
        loader.sampler.set_epoch(epoch)
        fractions.append(padding_fraction(loader))
    return sum(fractions) / len(fractions)


def measure(epochs: int = 2, window: int = 8) -> list[dict]:
    """One row per (tokenizer, batch size, method): the padding fraction, plain, grouped (transformers' window
    and ``window`` batches) and, for the decoder, padding-free: with FLARE's source flattened too (no source
    cache), and with the source cache (its rows padded) and the larger window."""
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
            plain, grouped, windowed = (
                epoch_fractions(records, encoder, batch_size, g, epochs) for g in (False, True, window)
            )
            row = {"tokenizer": arch, "batch": batch_size, "method": method, "plain": plain, "grouped": grouped}
            row |= {"windowed": windowed, "window": window, "padding_free": None, "cached": None}
            if FAMILIES[arch] == "decoder":
                flat = dict(padding_free=True, source_cache_gb=0)
                row["padding_free"] = epoch_fractions(records, encoder, batch_size, False, epochs, **flat)
                if source:
                    cached = epoch_fractions(records, encoder, batch_size, window, epochs, padding_free=True)
                    row["cached"] = cached
            rows.append(row | {"records": len(records), "epochs": epochs})
    return rows


def table(rows: list[dict]) -> str:
    """The rows of :func:`measure` as a Markdown table, with what they were measured on."""
    lines = [
        f"Padding among the computed positions: NusaX jav train ({rows[0]['records']} rows), max_length 128, one "
        f"worker, seed 42, mean of epochs 1-{rows[0]['epochs']}:",
        "",
        f"| tokenizer (tiny, offline) | batch | method | plain shuffle | group_by_length: true | group_by_length: "
        f"{rows[0]['window']} | padding_free | padding_free, source cached, group_by_length: {rows[0]['window']} |",
        "|---|---|---|---|---|---|---|---|",
    ]
    share = lambda x: "—" if x is None else f"{100 * x:.1f} %"  # noqa: E731
    for r in rows:
        figures = [share(r[k]) for k in ("plain", "grouped", "windowed", "padding_free", "cached")]
        lines.append(f"| {r['tokenizer']} | {r['batch']} | {r['method']} | {' | '.join(figures)} |")
    lines += [
        "",
        "padding_free: decoders only (an encoder's rows stay padded); with FLARE's source cache (the default) the "
        "source rows stay padded (the cache keys them by row) and count as computed although read back.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2, help="seeded epochs per figure (their mean)")
    parser.add_argument("--window", type=int, default=8, help="the larger group_by_length window, in batches")
    parser.add_argument("--results", type=Path, default=Path("-"), help="append the table here (-: print only)")
    args = parser.parse_args(argv)
    from common import report

    report(table(measure(args.epochs, args.window)), args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

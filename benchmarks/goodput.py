"""A finished sweep's goodput (issue 31's ``goodput`` row): the share of its trials' wall time spent in optimizer
steps, and where the rest went, read from its parent MLflow run (no sweep is run here).

    python benchmarks/goodput.py outputs/mlflow.db                  # the newest sweep of experiment "quickstart"
    python benchmarks/goodput.py outputs/mlflow.db --experiment NAME --run RUN_ID --results FILE
    python benchmarks/goodput.py outputs/mlflow.db --evaluation     # and the evaluation, before and after (a minute)

The parent run holds the sweep's figures (:meth:`flare_ray.search.progress.TimeAccount.metrics`): ``sweep/goodput``
and ``sweep/slot_goodput``, ``time/<phase>`` summed over the trials (each up to its last result), ``time/wall``
(the trials' wall time) and ``time/trials``. The shares are of the trials' wall time; they are what the sweep's
console line ``time: ...`` prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

GOODPUT, SLOT_GOODPUT = "sweep/goodput", "sweep/slot_goodput"


def read(store: Path | str, experiment: str = "quickstart", run_id: str | None = None) -> dict:
    """The goodput and the time shares of a sweep's parent run in ``store`` (a ``mlflow.db`` file, or a tracking
    URI): the run ``run_id``, else the newest run of ``experiment`` that holds ``sweep/goodput``."""
    from mlflow.tracking import MlflowClient

    from flare_ray.search.progress import NAMES
    from flare_ray.training.timing import PREFIX, WALL

    uri = str(store) if "://" in str(store) else f"sqlite:///{Path(store).resolve()}"
    client = MlflowClient(tracking_uri=uri)
    if run_id is not None:
        run = client.get_run(run_id)
    else:
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise ValueError(f"{uri}: no MLflow experiment {experiment!r}")
        runs = client.search_runs(
            [found.experiment_id], filter_string=f"metrics.`{GOODPUT}` >= 0", order_by=["attributes.start_time DESC"]
        )
        if not runs:
            raise ValueError(f"{uri}: experiment {experiment!r} holds no sweep's parent run with {GOODPUT}")
        run = runs[0]
    metrics = run.data.metrics
    if GOODPUT not in metrics:
        raise ValueError(f"{uri}: run {run.info.run_id} holds no {GOODPUT} (not a finished sweep's parent run)")
    wall = metrics.get(f"{PREFIX}{WALL}", 0.0)
    shares = {name: metrics.get(f"{PREFIX}{name}", 0.0) / wall if wall else 0.0 for name in NAMES}
    return {
        "run_id": run.info.run_id,
        "experiment": experiment,
        "trials": int(metrics.get(f"{PREFIX}trials", 0)),
        "trial_seconds": wall,
        "goodput": metrics[GOODPUT],
        "slot_goodput": metrics.get(SLOT_GOODPUT),
        "shares": shares,
    }


def table(rows: list[dict], labels: list[str] | None = None) -> str:
    """Sweeps read by :func:`read` as a Markdown table: one row each (``labels``: their names, e.g. before and
    after a change), the goodput and every phase's share of the trials' wall time."""
    from flare_ray.search.progress import NAMES

    labels = labels or [row["experiment"] for row in rows]
    phases = list(NAMES)
    lines = [
        "Goodput: the share of the trials' wall time in optimizer steps (`sweep/goodput` of the sweep's parent MLflow "
        "run), and where the rest went:",
        "",
        "| sweep | trials | trial-min | goodput | of the slots' time | "
        + " | ".join(NAMES[name] for name in phases)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(phases),
    ]
    share = lambda x: "—" if x is None else f"{100 * x:.0f} %"  # noqa: E731
    for label, row in zip(labels, rows):
        figures = [share(row["shares"][name]) for name in phases]
        lines.append(
            f"| {label} | {row['trials']} | {row['trial_seconds'] / 60:.1f} | {share(row['goodput'])} | "
            f"{share(row['slot_goodput'])} | {' | '.join(figures)} |"
        )
    return "\n".join(lines)


def evaluation(rounds: int = 3) -> dict:
    """The quickstart's evaluation, before and after issue 31's changes, side by side (interleaved, medians of
    ``rounds``): a FLARE classifier (the tiny XLM-R, add_relu on every layer, LoRA r 8) on NusaX Javanese's first
    100 validation rows (metric and loss) and 400 test rows (metric), eval batch 64, ``max_length`` 64.
    Before: the predictions and the loss in two passes, batches in the split's order; after:
    :func:`~flare_ray.training.evaluate.evaluate` (one pass, batches of rows of similar length)."""
    import statistics
    import time
    from types import SimpleNamespace

    import torch
    from peft import LoraConfig

    from flare_ray.fusion import FlareConfig, get_flare_model
    from flare_ray.models.loading import load_model
    from flare_ray.models.tiny import tiny_model_path
    from flare_ray.tasks import get_task
    from flare_ray.tasks.encoding import TaskEncoder
    from flare_ray.training.evaluate import evaluate

    task = get_task({"name": "nusax", "language": "jav", "max_records": {"validation": 100, "test": 400}})
    torch.manual_seed(0)
    base, tokenizer = load_model(str(tiny_model_path("xlm-roberta")), "encoder", labels=task.labels, head="task")
    model = get_flare_model(base, FlareConfig(fusion="add_relu"), LoraConfig(task_type="SEQ_CLS", r=8)).eval()
    encoder = TaskEncoder(task, tokenizer, "encoder", 64, source=True)
    training = SimpleNamespace(eval_batch_size=64, max_new_tokens=32)
    splits = {"validation": task.load("validation"), "test": task.load("test")}

    @torch.no_grad()
    def before(split: str) -> None:
        rows = list(splits[split])
        task.score(encoder.predict(model, rows, batch_size=64), splits[split])
        if split == "validation":
            for start in range(0, len(rows), 64):
                model(**encoder.train_batch(rows[start : start + 64]).inputs).loss.item()

    def after(split: str) -> None:
        evaluate(task, encoder, model, splits[split], training, split, 1, loss=split == "validation")

    seconds: dict[tuple[str, str], list[float]] = {}
    for _ in range(rounds + 1):  # the first round warms up
        for split in splits:
            for name, run in (("before", before), ("after", after)):
                started = time.perf_counter()
                run(split)
                seconds.setdefault((split, name), []).append(time.perf_counter() - started)
    return {key: statistics.median(values[1:]) for key, values in seconds.items()} | {"rounds": rounds}


def evaluation_table(figures: dict) -> str:
    """:func:`evaluation`'s medians as a Markdown table."""
    lines = [
        f"The quickstart's evaluation (FLARE, tiny XLM-R, NusaX jav, eval batch 64), before and after, side by side "
        f"(medians of {figures['rounds']} interleaved rounds):",
        "",
        "| split | before (two passes, split order) | after (one pass, length-sorted) | after ÷ before |",
        "|---|---|---|---|",
    ]
    for split in ("validation", "test"):
        old, new = figures[(split, "before")], figures[(split, "after")]
        lines.append(f"| {split} | {old:.3f} s | {new:.3f} s | {new / old:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("store", help="the sweep's mlflow.db (or a tracking URI)")
    parser.add_argument("--experiment", default="quickstart", help="its MLflow experiment (default: quickstart)")
    parser.add_argument("--run", default=None, help="the parent run's id (default: the experiment's newest sweep)")
    parser.add_argument("--results", type=Path, default=Path("-"), help="append the table here (-: print only)")
    parser.add_argument("--evaluation", action="store_true", help="also time the evaluation before and after")
    args = parser.parse_args(argv)
    from common import report

    report(table([read(args.store, args.experiment, args.run)]), args.results)
    if args.evaluation:
        report(evaluation_table(evaluation()), args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

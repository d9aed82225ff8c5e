"""The GPU check's section for ``benchmarks/RESULTS.md``, from what ``check.sh`` left in its output folder.

    python benchmarks/gpu/report.py OUT [MLFLOW_URI]

* the MFU table (``OUT/mfu.json``, ``mfu.py``), with the rows it skipped;
* with ``MLFLOW_URI``: per FLARE trial of the sweeps ``gpu-zero3``, ``gpu-zero2`` and ``gpu-ddp`` (one GPU),
  tokens/s and peak GPU memory per epoch; the QLoRA sweep's (``gpu-qlora-flare``) goodput and its trials'
  figures. A sweep that did not run or finish in its time box is said so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SWEEPS = {
    "gpu-zero3": "DeepSpeed ZeRO-3",
    "gpu-zero2": "DeepSpeed ZeRO-2",
    "gpu-ddp": "DDP (no DeepSpeed)",
    "gpu-qlora-flare": "QLoRA (NF4), LoRA and FLARE",
}


def mfu_section(out: Path) -> list[str]:
    from mfu import table

    path = out / "mfu.json"
    if not path.is_file():  # (the sweeps' call: the MFU table came back from the first call)
        return []
    data = json.loads(path.read_text())
    lines = [f"**bf16 step time and MFU** (`mfu.py`, {data['device']}, peak {data['peak_tflops']} TFLOPS):", ""]
    lines += table(data["results"])
    lines += [f"- {what}: skipped ({why})" for what, why in data.get("skipped", {}).items()]
    return lines


def sweep_section(uri: str) -> list[str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    lines = [
        "",
        "**Trials through `python -m flare_ray.tune` on one GPU**, per epoch from MLflow:",
        "",
        "| sweep | trial | epoch | tokens/s | peak GPU memory (GiB) | status | sweep goodput |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for name, what in SWEEPS.items():
        experiment = client.get_experiment_by_name(name)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        parent = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
        goodput = next((r.data.metrics.get("sweep/goodput") for r in parent if "sweep/goodput" in r.data.metrics), None)
        shown = f"{goodput:.0%}" if goodput is not None else "—"
        trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
        if not trials:
            lines.append(f"| {what} | — | — | — | — | did not run in its time box | {shown} |")
            continue
        for run in sorted(trials, key=lambda r: r.info.start_time):
            method = run.data.tags.get("flare_ray.method", "?")
            speed = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/tokens_per_second")}
            memory = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "train/peak_memory_gb")}
            for epoch in sorted(speed) or [None]:
                figures = (
                    f"{speed[epoch]:,.0f} | {memory.get(epoch, float('nan')):.2f}" if epoch is not None else "— | —"
                )
                lines.append(f"| {what} | {method} | {epoch or '—'} | {figures} | {run.info.status} | {shown} |")
    return lines


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    lines = mfu_section(out)
    if len(argv) > 1:
        lines += sweep_section(argv[1])
    versions = out / "versions.txt"
    if versions.is_file():
        lines = ["```", versions.read_text().strip(), "```", ""] + lines
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

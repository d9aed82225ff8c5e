"""Every method of the paper's Table 4 setting on a real multilingual encoder, offline: a table with p-values.

multilingual-e5-small from a Hugging Face cache that ``../shared/tools/e5_offline.py DIR`` builds offline;
NusaX Javanese in the gold setting (the human English translation as the source side at train, validation
and test: NusaX is parallel, and NLLB cannot be had offline, so FLARE-MT is left out); the recipe of
``recipe_real_encoder.py`` (stage 1 on English, then r 8, alpha 16, dropout 0, constant 2e-4, 5 epochs of batch
16 x 64 tokens); seeds 0-2. One ``python -m flare_ray.tune`` sweep, a grid over ``method.kind``, then
``python -m flare_ray.report`` on it (mean ± std over seeds, paired-bootstrap p-values against the best).

    python benchmarks/baselines_real_encoder.py --hf-home DIR --out DIR            # every method (~1-1.5 h, 2 cores)
    python benchmarks/baselines_real_encoder.py --hf-home DIR --out DIR --methods xmixup --name e5-xmixup

A second run in the same ``--out`` reuses stage 1 (same fingerprint); ``--report`` names further sweeps of the
same MLflow store to report together with this one. Nothing here is a test: the table goes to the console
(and ``--results``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).parent))
from recipe_real_encoder import recipe_yaml  # noqa: E402  (the recipe, one place)

METHODS = ["zero_shot", "translate_test", "lora", "xmixup", "input_fusion", "flare"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hf-home", required=True, help="the cache e5_offline.py built")
    parser.add_argument("--out", type=Path, required=True, help="working folder (storage, MLflow store, logs)")
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--name", default="e5-gold-nusax", help="the sweep's name")
    parser.add_argument("--report", nargs="*", default=[], help="further sweeps to report with this one")
    parser.add_argument("--results", type=Path, default=Path("-"), help="append the results here (- : print only)")
    args = parser.parse_args()
    env = {
        **os.environ,
        "HF_HOME": args.hf_home,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_ADDRESS": "local",
    }
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    yaml = out / f"{args.name}.yaml"
    yaml.write_text(recipe_yaml(args.name, args.methods, args.seeds))
    uri = f"sqlite:///{out / 'mlflow.db'}"
    started = time.time()
    console = out / f"{args.name}.console.txt"
    with open(console, "w") as log:
        command = [
            sys.executable,
            "-m",
            "flare_ray.tune",
            str(yaml),
            "--set",
            f"storage_path={out / 'storage'}",
            "--set",
            f"tracking.tracking_uri={uri}",
        ]
        if subprocess.run(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode:
            raise SystemExit(f"the sweep failed: {console}")
    seconds = time.time() - started
    report = out / "reports" / "-".join([args.name, *args.report])
    command = [
        sys.executable,
        "-m",
        "flare_ray.report",
        args.name,
        *args.report,
        "--tracking-uri",
        uri,
        "--output",
        str(report),
    ]
    subprocess.run(command, cwd=REPO, env=env, check=True, capture_output=True)
    table = next(report.glob("*.md")).read_text()
    from common import report as write

    write(
        f"### e5-small, NusaX Javanese, gold setting: {', '.join(args.methods)} x seeds {args.seeds} "
        f"(sweep {args.name}: {seconds:.0f} s; {console})\n\n{table}\n",
        args.results,
    )


if __name__ == "__main__":
    main()

"""Time `flare-ray tune <yaml> --dry-run` for every shipped search space, each in a fresh process (imports
included, as a user runs it). Reports wall times; asserts nothing (targets: benchmarks, not tests).

    python benchmarks/dry_run.py            # a table: YAML, seconds (median of --repeat runs)
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per YAML (the median is reported)")
    args = parser.parse_args(argv)
    failed = 0
    print(f"{'search space':<45} {'seconds':>8}")
    for path in sorted((REPO / "search_spaces").rglob("*.yaml")):
        times = []
        for _ in range(args.repeat):
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "flare_ray.tune", str(path), "--dry-run"],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            times.append(time.perf_counter() - started)
            failed += done.returncode != 0
        print(
            f"{str(path.relative_to(REPO)):<45} {statistics.median(times):>8.2f}"
            + ("  FAILED" if done.returncode else "")
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

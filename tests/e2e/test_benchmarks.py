"""The benchmarks' small version (`python benchmarks/run.py --small`): tiny models, two timed steps per
method, a three-trial sweep. It asserts what the run reports, never a time (targets are benchmarks)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO
from tests.sweeps import environment

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_the_small_benchmark_reports_every_ratio_to_lora(tmp_path):
    results = tmp_path / "RESULTS.md"
    done = subprocess.run(
        [
            sys.executable,
            "benchmarks/run.py",
            "--small",
            "--models",
            str(tmp_path / "models"),
            "--results",
            str(results),
        ],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = results.read_text()
    rows = dict(re.findall(r"^\| (\w+) \| [\d.]+ \| ([\d.]+) \|", text, re.M))
    assert set(rows) == {"lora", "flare", "flare_cached", "flare_mt", "flare_mt_cached", "input_fusion"}
    assert float(rows["lora"]) == 1.0 and all(float(v) > 0 for v in rows.values())
    cached = re.findall(r"^\| (flare\w*_cached) \|.*\| (\d+)% \|$", text, re.M)
    assert dict(cached) == {"flare_cached": "100", "flare_mt_cached": "100"}  # every timed step read the cache
    assert re.search(r"first trial [\d.]+ s .* later trials [\d.]+ s", text)
    assert "--dry-run` of the quickstart" in text
    assert re.search(r"^\| llama \| 32 \| FLARE \|( [\d.]+ % \|){3} 0\.0 % \| [\d.]+ % \|$", text, re.M)  # padding
    assert re.search(r"^\| the startup sweep \| 3 \| [\d.]+ \| \d+ % \|", text, re.M)  # its goodput, from MLflow
    issue31 = re.findall(r"^\| (flare\w*_cached) ÷ LoRA step, CPU \| [\d.]+ \| ≤ [\d.]+ \| ([\d.]+) \|$", text, re.M)
    assert {kind: float(ratio) == round(float(rows[kind]), 2) for kind, ratio in issue31} == {
        "flare_cached": True,
        "flare_mt_cached": True,
    }  # issue 31's rows are this run's figures
    assert re.search(r"^\| sweep goodput \(startup, CPU\) \| 48 % \(quickstart\) \| ≥ 80 % \| \d+ % \|$", text, re.M)

"""What the benchmarks share: printing and appending a results section, and a local server for one run
(the test suite's fixtures start theirs with :func:`served` too)."""

from __future__ import annotations

import contextlib
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator


def report(text: str, results: Path) -> None:
    """Print a results section and append it to ``results`` (``-``: print only)."""
    print()
    print(text)
    if str(results) != "-":
        with results.open("a") as f:
            f.write("\n" + text)
        print(f"appended to {results}")


@contextlib.contextmanager
def served(
    command: list[str], url: str, env: dict[str, str] | None, log: Path, timeout: float = 60
) -> Iterator[subprocess.Popen]:
    """A local server, started from ``command`` (its output in ``log``) and returned once ``url`` answers;
    stopped on exit."""
    with log.open("w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"{' '.join(command[:4])} did not start: {log.read_text()[-3000:]}") from None
                time.sleep(0.3)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()

"""A sweep whose storage disk fills up stops with one line, marks its runs FAILED and keeps what it wrote (issue 28,
item 7b). Before: on a 3 MB tmpfs, 2,142 console lines with 46 tracebacks, no summary, the parent run RUNNING.

The storage is a 3 MB tmpfs where this machine lets the test mount one (root), else a folder the sweep's disk
guard is told is a 3 MB disk (``FLARE_RAY_FAKE_DISK_SIZE``: the guard's view only, no write fails)."""

from __future__ import annotations

import subprocess

import pytest

from flare_ray.search.disk import FAKE_SIZE_ENV, RESERVE_NAME
from tests.helpers import REPO
from tests.sweeps import SHORT, environment, mlflow_runs, tune_command

pytestmark = [pytest.mark.slow, pytest.mark.ray]
SIZE = 3 * 2**20


@pytest.fixture
def small_disk(tmp_path):
    """(storage folder, extra environment): a real 3 MB filesystem where one can be mounted, else a fake one."""
    folder = tmp_path / "small-disk"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        yield folder, {FAKE_SIZE_ENV: str(SIZE)}
        return
    try:
        yield folder, {}
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def test_a_full_disk_stops_the_sweep_with_one_line(small_disk, fault_summary):
    storage, extra = small_disk
    env = {**environment(), "RAY_ADDRESS": "local", **extra}
    done = subprocess.run(tune_command(storage, *SHORT), env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    errors = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    assert errors[-1] == (
        f"error: no space left on {storage} ({errors[-1].split('(')[1].split(')')[0]}): the sweep stopped; "
        "the runs are marked FAILED; free space and run the same command with --resume"
    ), errors
    assert len(errors) == 1, errors  # the line alone
    assert not (storage / RESERVE_NAME).exists()
    # what was written is kept: the sqlite store opens and holds the sweep's runs, none left RUNNING
    _, parents, children = mlflow_runs(storage)
    (parent,) = parents
    assert parent.info.status == "FAILED" and "no space left on" in parent.data.tags["flare_ray.error"]
    assert all(c.info.status != "RUNNING" for c in children), [c.info.status for c in children]
    fault_summary(
        "full disk" + (" (simulated)" if extra else " (3 MB tmpfs)"),
        failures_injected=1,
        trials_completed=sum(c.info.status == "FINISHED" for c in children),
        mlflow_runs=len(children),
        duplicates=len(children) - len({c.data.tags.get("flare_ray.trial_id") for c in children}),
        console_error_lines=len(errors),
        tracebacks=0,
        parent_run=parent.info.status,
    )

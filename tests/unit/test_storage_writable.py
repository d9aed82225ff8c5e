"""A local ``storage_path`` the sweep cannot write is an error before Ray starts (issue 28, item 7a): a file, a
folder under a file, a read-only filesystem, a folder that cannot be created. ``python -m flare_ray.tune``
names the config file, the key and the path and exits 2, in ``--dry-run`` too (before: a traceback from
``cli/tune.py``, or a dry run that passed); a missing folder is created; an ``s3://`` store is not probed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from flare_ray.cli.tune import main
from flare_ray.storage import unwritable
from tests.helpers import QUICKSTART, refuse_ray


@pytest.fixture(autouse=True)
def before_ray(tmp_path, monkeypatch):
    """Ray cannot start here (a test that reaches ``ray.init`` fails); the sweep would start a local Ray."""
    refuse_ray(tmp_path, monkeypatch)


@pytest.fixture
def read_only(tmp_path):
    """A folder this process cannot write: mode 0555, or for root (who writes there anyway) a read-only tmpfs."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)]).returncode != 0:
        pytest.skip("root, and no read-only filesystem can be mounted here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def tune_error(storage: str, capsys, dry_run: bool = True) -> str:
    """``python -m flare_ray.tune`` on the quickstart with ``storage_path=storage``: exit status 2, one error line."""
    argv = [str(QUICKSTART), "--set", f"storage_path={storage}", *(["--dry-run"] if dry_run else [])]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "Traceback" not in captured.err
    (line,) = captured.err.splitlines()
    assert line.startswith(f"error: {QUICKSTART}: storage_path: "), line
    return line


@pytest.mark.parametrize("dry_run", [True, False])
def test_a_storage_path_that_is_a_file(tmp_path, capsys, dry_run):
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    line = tune_error(str(file), capsys, dry_run)
    assert line.endswith(f"{file} is a file; expected a folder")
    assert file.read_text() == "not a folder"


def test_a_storage_path_under_a_file(tmp_path, capsys):
    file = tmp_path / "a-file"
    file.write_text("")
    line = tune_error(str(file / "sweeps"), capsys)
    assert line.endswith(f"{file / 'sweeps'} cannot be created: {file} is a file; expected a folder")


def test_a_read_only_storage_path(read_only, capsys):
    line = tune_error(str(read_only), capsys)
    assert line.endswith(f"{read_only} cannot be written (Read-only file system)") or line.endswith(
        f"{read_only} cannot be written (Permission denied)"
    )
    line = tune_error(f"file://{read_only}/sweeps", capsys, dry_run=False)
    assert f"{read_only}/sweeps cannot be created (" in line
    assert list(read_only.iterdir()) == []  # no probe file left


def test_a_writable_storage_path_is_created_and_left_clean(tmp_path):
    folder = tmp_path / "new" / "sweeps"
    assert unwritable(str(folder)) is None
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert unwritable("s3://flare-sweeps/nowhere") is None  # a remote store: written through its filesystem


def test_a_folder_that_cannot_be_created(tmp_path):
    problem = unwritable(str(Path("/proc/no-such-process/sweeps")))
    assert problem is not None and "cannot be created" in problem and "/proc/no-such-process" in problem

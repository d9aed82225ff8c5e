"""Content hashes of what a sweep writes and later reads back (a stage-1 adapter folder, a translated split, a
source-cache shard, a trial's checkpoint): written last, beside the files, and checked before the files are
used, so that a truncated or altered file is found (and rebuilt, or passed over) with its path and what is
wrong, rather than failing deep inside safetensors or pandas.

A folder's manifest, ``sha256.json``, lists every file under it (relative paths) with its size and SHA-256;
a single file's is ``<file>.sha256`` beside it. Both are written atomically, after the files they describe:
a folder without its manifest was never finished (or predates manifests: :func:`check_folder` says which).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST = "sha256.json"
SUFFIX = ".sha256"
_CHUNK = 1 << 20


class DigestMismatch(ValueError):
    """A file is not what its manifest says: its message names the file and what is wrong."""


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _atomic_write(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _listed(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.endswith(".partial")
    )


def write_manifest(folder: Path) -> Path:
    """Hash every file under ``folder`` into its ``sha256.json`` (call it once the folder is complete)."""
    folder = Path(folder)
    files = {
        p.relative_to(folder).as_posix(): {"size": p.stat().st_size, "sha256": sha256_file(p)} for p in _listed(folder)
    }
    path = folder / MANIFEST
    _atomic_write(path, json.dumps({"files": files}, indent=1, sort_keys=True))
    return path


def has_manifest(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def folder_problem(folder: Path) -> str | None:
    """What is wrong with ``folder`` against its manifest (None: every file listed is there, of its size and
    hash; files added since are not checked). A folder without a manifest is a problem too: the caller decides
    whether that means unfinished or written by an earlier version."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        return f"{folder} has no {MANIFEST} (it was not finished, or an earlier version wrote it)"
    try:
        files = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError, OSError) as err:
        return f"{path} is unreadable ({type(err).__name__}: {err})"
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            return f"{file} is missing (listed in {path})"
        size = file.stat().st_size
        if size != expected["size"]:
            return f"{file} has {size} bytes, {expected['size']} were written (truncated or altered)"
        if sha256_file(file) != expected["sha256"]:
            return f"{file} does not match the SHA-256 written beside it in {path} (altered or corrupted)"
    return None


def check_folder(folder: Path) -> None:
    """Raise :class:`DigestMismatch` if :func:`folder_problem` finds one."""
    problem = folder_problem(folder)
    if problem:
        raise DigestMismatch(problem)


def write_file_digest(path: Path) -> Path:
    """Hash one file into ``<file>.sha256`` beside it (call it once the file is complete)."""
    path = Path(path)
    sidecar = path.with_name(path.name + SUFFIX)
    _atomic_write(sidecar, json.dumps({"size": path.stat().st_size, "sha256": sha256_file(path)}))
    return sidecar


def file_problem(path: Path) -> str | None:
    """What is wrong with one file against its ``<file>.sha256`` (None: it matches)."""
    path = Path(path)
    sidecar = path.with_name(path.name + SUFFIX)
    if not path.is_file():
        return f"{path} is missing"
    if not sidecar.is_file():
        return f"{path} has no {sidecar.name} beside it (it was not finished, or an earlier version wrote it)"
    try:
        expected = json.loads(sidecar.read_text())
        size, sha = expected["size"], expected["sha256"]
    except (ValueError, KeyError, TypeError, OSError) as err:
        return f"{sidecar} is unreadable ({type(err).__name__}: {err})"
    if path.stat().st_size != size:
        return f"{path} has {path.stat().st_size} bytes, {size} were written (truncated or altered)"
    if sha256_file(path) != sha:
        return f"{path} does not match the SHA-256 in {sidecar.name} (altered or corrupted)"
    return None


def check_file(path: Path) -> None:
    problem = file_problem(path)
    if problem:
        raise DigestMismatch(problem)

"""Reading checkpoints from a sweep's storage, local or remote (S3, GCS, ... through pyarrow)."""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def local_copy(path: str, storage_path: str) -> Iterator[str]:
    """A checkpoint folder on local disk: itself, or a copy from remote storage (S3, GCS, ...)."""
    if Path(path).is_dir():
        yield path
        return
    import pyarrow.fs

    filesystem, _ = pyarrow.fs.FileSystem.from_uri(storage_path)
    with tempfile.TemporaryDirectory(prefix="adapter-") as folder:
        pyarrow.fs.copy_files(path, folder, source_filesystem=filesystem)
        yield folder

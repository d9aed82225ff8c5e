"""A sweep's storage: a local folder or a URI (``file://``, ``s3://``, ``gs://``), never through pathlib as a URI.

``storage_path`` is resolved once, when the experiment is loaded (local paths
made absolute, URIs kept as written); these helpers join and read it.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse


def local_path(value: str) -> str:
    """A local path made absolute; a URI (``scheme://...``) as it is."""
    return value if "://" in value else str(Path(value).expanduser().resolve())


def local_folder(storage_path: str) -> Path | None:
    """The local folder of a plain path or a ``file://`` URI; None for a remote store."""
    if "://" not in storage_path:
        return Path(storage_path)
    parsed = urlparse(storage_path)
    return Path(unquote(parsed.path)) if parsed.scheme == "file" else None


def join(storage_path: str, *parts: str) -> str:
    """``storage_path/part/...``, keeping a URI a URI (``Path("s3://b/x")`` would make it ``s3:/b/x``)."""
    return "/".join([storage_path.rstrip("/"), *parts])


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

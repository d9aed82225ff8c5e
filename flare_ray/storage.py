"""A sweep's storage: a local folder or a URI (``file://``, ``s3://``, ``gs://``), never through pathlib as a URI.

``storage_path`` is resolved once, when the experiment is loaded (local paths
made absolute, URIs kept as written); these helpers join and read it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse

from flare_ray.secrets import redact

FULL = ("No space left on device", "database or disk is full", "Errno 28")
"""How a full disk reads in an error's text (an OSError's, sqlite's, or one relayed from a trial's process)."""
SCHEMES = ("file", "s3", "gs")  # the URIs a sweep's storage may be (pyarrow's filesystems, as Ray Tune reads them)


def storage_problem(value: str) -> str | None:
    """What is wrong with ``value`` as a sweep's storage (a blank one, or a URI of a scheme not in
    :data:`SCHEMES`), or None where it is a local path or a URI of a supported store."""
    expected = f"expected a local folder or a URI ({', '.join(f'{s}://' for s in SCHEMES)})"
    shown = repr(redact(value))  # never a password in an error
    if not value.strip():
        return f"{shown} is blank; {expected}"
    if value != value.strip():
        return f"{shown} starts or ends with white space; {expected}"
    if "://" not in value:
        return None
    scheme, _, rest = value.partition("://")
    if scheme.lower() not in SCHEMES:
        return f"{shown}: {scheme}:// is not a storage a sweep can use; {expected}"
    if not rest.strip("/"):
        return f"{shown} names no {'folder' if scheme.lower() == 'file' else 'bucket'}; {expected}"
    return None


def is_disk_full(error: BaseException | str | None) -> bool:
    """Whether ``error`` (an exception, with its causes, or a text) says the disk is full."""
    seen = set()
    while isinstance(error, BaseException) and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return True
        if any(marker in str(error) for marker in FULL):
            return True
        error = error.__cause__ or error.__context__
    return isinstance(error, str) and any(marker in error for marker in FULL)


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


def is_remote(path: str | Path) -> bool:
    """Whether ``path`` is a URI of a store other than the local disk (``s3://``, ``gs://``, ...)."""
    return "://" in str(path) and local_folder(str(path)) is None


def _filesystem(uri: str):
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)  # (filesystem, path within it)


@contextmanager
def local_copy(path: str, storage_path: str | None = None) -> Iterator[str]:
    """A folder on local disk: itself, or a copy of a remote one, given as a URI (``s3://b/x``) or as a path
    within ``storage_path``'s filesystem (a checkpoint's path as Ray reports it)."""
    if Path(path).is_dir():
        yield path
        return
    import pyarrow.fs

    filesystem, path = _filesystem(path) if "://" in path else (_filesystem(storage_path or path)[0], path)
    with tempfile.TemporaryDirectory(prefix="adapter-") as folder:
        pyarrow.fs.copy_files(path, folder, source_filesystem=filesystem)
        yield folder


def upload(folder: str | Path, destination: str) -> None:
    """Copy a local folder's files to ``destination``, a local folder or a URI."""
    import pyarrow.fs

    if not is_remote(destination):
        shutil.copytree(folder, local_folder(destination), dirs_exist_ok=True)
        return
    filesystem, path = _filesystem(destination)
    pyarrow.fs.copy_files(
        str(folder), path, source_filesystem=pyarrow.fs.LocalFileSystem(), destination_filesystem=filesystem
    )


def download(source: str, folder: str | Path) -> None:
    """Copy the files under ``source`` (a local folder or a URI) into the local ``folder``."""
    import pyarrow.fs

    if not is_remote(source):
        shutil.copytree(local_folder(source), folder, dirs_exist_ok=True)
        return
    filesystem, path = _filesystem(source)
    Path(folder).mkdir(parents=True, exist_ok=True)
    pyarrow.fs.copy_files(
        path, str(folder), source_filesystem=filesystem, destination_filesystem=pyarrow.fs.LocalFileSystem()
    )


def exists(path: str | Path) -> bool:
    """Whether a file or folder exists: a local path or a URI."""
    if not is_remote(path):
        return local_folder(str(path)).exists()
    import pyarrow.fs

    filesystem, inner = _filesystem(str(path))
    return filesystem.get_file_info(inner).type != pyarrow.fs.FileType.NotFound


def read_text(path: str | Path) -> str:
    """A text file's content: a local path or a URI."""
    if not is_remote(path):
        return local_folder(str(path)).read_text()
    filesystem, inner = _filesystem(str(path))
    with filesystem.open_input_stream(inner) as stream:
        return stream.read().decode()


def write_text(path: str | Path, text: str) -> None:
    """Write a text file: a local path or a URI."""
    if not is_remote(path):
        local_folder(str(path)).write_text(text)
        return
    filesystem, inner = _filesystem(str(path))
    with filesystem.open_output_stream(inner) as stream:
        stream.write(text.encode())


def unwritable(storage_path: str) -> str | None:
    """Why a sweep cannot write its local storage folder (a file, under a file, read-only, not creatable), or
    None where it can, or where it is a remote store (``s3://``, ``gs://``: written through its filesystem, which
    says so itself). Creates the folder where it is missing, and writes and removes a probe file in it: a
    permission check alone would miss a read-only filesystem or a full one."""
    folder = local_folder(storage_path)
    if folder is None:
        return None
    if folder.exists() and not folder.is_dir():
        return f"{folder} is a file; expected a folder"
    above = next((parent for parent in folder.parents if parent.exists()), None)
    if above is not None and not above.is_dir():
        return f"{folder} cannot be created: {above} is a file; expected a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return f"{folder} cannot be created ({_why(err)})"
    probe = folder / f".flare_ray-write-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"probe")
        probe.unlink()
    except OSError as err:
        return f"{folder} cannot be written ({err.strerror or err})"
    return None


def _why(err: OSError) -> str:
    """An OSError in words, naming the path it is about (a missing folder above the one asked for)."""
    return f"{err.strerror or err}: {err.filename}" if err.filename else f"{err.strerror or err}"

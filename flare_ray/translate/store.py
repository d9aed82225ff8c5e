"""Where translated splits live, their provenance, and the cache that reuses them.

Layout: ``<mt_dir>/<task>/<language>/<role>.parquet`` (the task's parallel
records with the translated side replaced, read back by ``Task.load`` with the
``mt`` recipe), ``<role>.parquet.sha256`` (its size and SHA-256, :mod:`flare_ray.digests`) and
``<role>.provenance.json`` beside it, in that order: the provenance, written last, marks the split complete. The
provenance holds a cache key: a hash of everything that determines the translation (model,
languages, decoding settings, marker settings, the input records). A split whose
provenance carries the same key is reused as it is, unless its parquet no longer matches its digest (then it
is translated again). A split without a digest (made by an earlier version, or shipped with the data) is read
as it is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare_ray.digests import SUFFIX, file_problem, write_file_digest
from flare_ray.tasks.base import provenance_path  # beside the split path it names; re-exported here

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger("flare_ray.translate")


def sha256_json(value: Any) -> str:
    """Hash of a JSON-serialisable value (key order does not matter)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def records_sha256(records: datasets.Dataset) -> str:
    """Hash of a split's records: the input of a translation."""
    return sha256_json({"columns": records.column_names, "rows": records.to_list()})


def files_sha256(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by path relative to it."""
    hashes = {}
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        hashes[path.relative_to(folder).as_posix()] = digest.hexdigest()
    return hashes


def cached_provenance(split_path: Path, cache_key: str) -> dict[str, Any] | None:
    """The provenance of a split already translated with this cache key, else None."""
    prov_path = provenance_path(split_path)
    if not (split_path.is_file() and prov_path.is_file()):
        return None
    try:
        provenance = json.loads(prov_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    if provenance.get("cache_key") != cache_key:
        return None
    problem = split_problem(split_path)
    if problem is not None:
        logger.warning("%s: %s: translating it again", split_path, problem)
        return None
    return provenance


def digest_path(split_path: Path) -> Path:
    """The digest beside a translated split (:func:`flare_ray.digests.write_file_digest`)."""
    return split_path.with_name(split_path.name + SUFFIX)


def split_problem(split_path: Path) -> str | None:
    """What is wrong with a translated split against the digest written beside it, naming the file; None where
    it matches, or where it has none (a split of an earlier version, or one shipped with the data: read as it
    is, as before digests)."""
    if not digest_path(split_path).is_file():
        return None
    return file_problem(split_path)


def write_split(records: datasets.Dataset, provenance: dict[str, Any], split_path: Path) -> None:
    """Write a translated split, its digest and then its provenance, each atomically (the provenance marks it
    complete; the digest is checked before a later run reuses it)."""
    split_path.parent.mkdir(parents=True, exist_ok=True)
    prov_path = provenance_path(split_path)
    prov_path.unlink(missing_ok=True)
    digest_path(split_path).unlink(missing_ok=True)  # never beside a file it was not written for
    tmp = split_path.with_name(f".{split_path.name}.tmp-{os.getpid()}")
    records.to_parquet(str(tmp))
    os.replace(tmp, split_path)
    write_file_digest(split_path)
    tmp = prov_path.with_name(f".{prov_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(provenance, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, prov_path)

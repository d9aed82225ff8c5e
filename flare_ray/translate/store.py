"""Where translated splits live, their provenance, and the cache that reuses them.

Layout: ``<mt_dir>/<task>/<language>/<role>.parquet`` (the task's parallel
records with the translated side replaced, read back by ``Task.load`` with the
``mt`` recipe) and ``<role>.provenance.json`` beside it. The provenance holds a
cache key: a hash of everything that determines the translation (model,
languages, decoding settings, marker settings, the input records). A split whose
provenance carries the same key is reused as it is.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flare_ray.tasks.base import provenance_path  # beside the split path it names; re-exported here

if TYPE_CHECKING:
    import datasets


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
    return provenance if provenance.get("cache_key") == cache_key else None


def write_split(records: datasets.Dataset, provenance: dict[str, Any], split_path: Path) -> None:
    """Write a translated split and then its provenance, each atomically (the provenance marks it complete)."""
    split_path.parent.mkdir(parents=True, exist_ok=True)
    prov_path = provenance_path(split_path)
    prov_path.unlink(missing_ok=True)
    tmp = split_path.with_name(f".{split_path.name}.tmp-{os.getpid()}")
    records.to_parquet(str(tmp))
    os.replace(tmp, split_path)
    tmp = prov_path.with_name(f".{prov_path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(provenance, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, prov_path)

"""Content hashes (flare_ray.digests): a complete folder or file checks clean; a truncated, altered, missing
or unlisted-manifest one is named with what is wrong."""

from __future__ import annotations

import pytest

from flare_ray.digests import (
    MANIFEST,
    DigestMismatch,
    check_file,
    check_folder,
    file_problem,
    folder_problem,
    write_file_digest,
    write_manifest,
)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "weights.safetensors").write_bytes(b"\x00" * 1000)
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "config.json").write_text('{"r": 8}')
    write_manifest(tmp_path / "a")
    return tmp_path / "a"


def test_a_complete_folder_checks_clean(folder):
    assert folder_problem(folder) is None
    check_folder(folder)


def test_a_truncated_file_is_named_with_its_sizes(folder):
    (folder / "weights.safetensors").write_bytes(b"\x00" * 10)
    problem = folder_problem(folder)
    assert "weights.safetensors" in problem and "10 bytes, 1000 were written" in problem
    with pytest.raises(DigestMismatch, match="truncated"):
        check_folder(folder)


def test_an_altered_file_of_the_same_size_is_found(folder):
    (folder / "sub" / "config.json").write_text('{"r": 9}')
    assert "sub/config.json does not match the SHA-256" in folder_problem(folder)


def test_a_missing_file_or_manifest_is_named(folder):
    (folder / "sub" / "config.json").unlink()
    assert "config.json is missing" in folder_problem(folder)
    (folder / MANIFEST).unlink()
    assert f"has no {MANIFEST}" in folder_problem(folder)
    (folder / MANIFEST).write_text("{not json")
    assert "unreadable" in folder_problem(folder)


def test_a_single_files_sidecar(tmp_path):
    shard = tmp_path / "shard-0.safetensors"
    shard.write_bytes(b"abc" * 100)
    assert "has no shard-0.safetensors.sha256" in file_problem(shard)
    write_file_digest(shard)
    check_file(shard)
    shard.write_bytes(b"abc" * 99)
    with pytest.raises(DigestMismatch, match="297 bytes, 300 were written"):
        check_file(shard)
    shard.unlink()
    assert "is missing" in file_problem(shard)

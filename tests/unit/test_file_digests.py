"""Files a sweep reads back are checked before use (issue 28, item 6): a stage-1 folder, a translated split and
the shared source cache carry the content hash written with them (:mod:`flare_ray.digests`). What the sweep
made itself and fails its check is made again, with a line naming the file and what is wrong (stage 1 with
``model.stage1: auto``, a translation, the source cache); what the user gave (a ``model.stage1`` folder, a
``task.mt_dir``) stops the sweep before Ray, naming the file. Files written before digests, or by hand, are
read as before: a stage-1 folder without ``sha256.json`` only if its safetensors parse."""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from flare_ray.digests import MANIFEST, has_manifest, write_manifest
from flare_ray.experiment import ExperimentConfigError, load_experiment
from tests.helpers import QUICKSTART


def truncate(path: Path, keep: float = 0.5) -> None:
    """Cut ``path`` to a share of its bytes, as a full disk or a killed copy leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def adapter_folder(folder: Path, value: float = 1.0) -> Path:
    """A stage-1 adapter folder as peft writes one (an adapter config and safetensors weights)."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2}))
    save_file({"lora_A": np.full((64, 64), value, dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    return folder


# -- stage 1 that the sweep trains (model.stage1: auto) -------------------------------------------------------
class FakeStage1:
    """``train`` for :func:`ensure_stage1`: writes the folder as stage 1's worker does (the adapter, its
    ``sha256.json``, ``stage1.json`` last) and counts the trainings."""

    def __init__(self, manifest: bool = True) -> None:
        self.calls, self.manifest = 0, manifest

    def __call__(self, experiment, folder: str, key: str) -> str:
        self.calls += 1
        adapter_folder(Path(folder), value=float(self.calls))
        if self.manifest:
            write_manifest(Path(folder))
        info = {"best_epoch": 1, "english_validation": {"macro_f1": 50.0}, "fingerprint": key}
        (Path(folder) / "stage1.json").write_text(json.dumps(info))
        return folder


def auto_experiment(tmp_path):
    return load_experiment(QUICKSTART, ["model.stage1=auto", f"storage_path={tmp_path / 'storage'}"])


def test_a_damaged_stage1_folder_of_the_sweep_is_trained_again(tmp_path, caplog):
    from flare_ray.training.stage1 import ensure_stage1, reuse_problem

    experiment, train = auto_experiment(tmp_path), FakeStage1()
    folder, info = ensure_stage1(experiment, train)
    assert train.calls == 1 and not info["reused"] and has_manifest(folder)
    assert ensure_stage1(experiment, train)[1]["reused"] and train.calls == 1  # intact: reused

    weights = Path(folder) / "adapter_model.safetensors"
    truncate(weights)
    with caplog.at_level(logging.WARNING, logger="flare_ray"):
        again, info = ensure_stage1(experiment, train)
    assert train.calls == 2 and not info["reused"] and again == folder
    assert str(weights) in info["retrained"] and "truncated" in info["retrained"]
    assert any(str(weights) in r.getMessage() and "training it again" in r.getMessage() for r in caplog.records)
    assert reuse_problem(Path(folder)) is None  # the new one, in place
    assert not [p for p in Path(folder).parent.iterdir() if p.name.startswith(".")]  # nothing left aside

    # the same size, other bytes: only the hash sees it
    data = bytearray(weights.read_bytes())
    data[-4:] = b"\x00\x00\x80\x7f"
    weights.write_bytes(bytes(data))
    assert not ensure_stage1(experiment, train)[1]["reused"] and train.calls == 3


def test_an_earlier_versions_stage1_folder_is_reused_if_its_safetensors_parse(tmp_path):
    """Folders written before manifests (``stage1.json``, no ``sha256.json``): reused when their safetensors
    parse, and given a manifest then (every later reuse checks the hashes); trained again when they do not."""
    from flare_ray.training.stage1 import ensure_stage1

    experiment, old = auto_experiment(tmp_path), FakeStage1(manifest=False)
    folder, _ = ensure_stage1(experiment, old)
    assert not has_manifest(folder)
    folder, info = ensure_stage1(experiment, old)
    assert info["reused"] and old.calls == 1 and has_manifest(folder)

    shutil.rmtree(folder)
    folder, _ = ensure_stage1(experiment, old)
    truncate(Path(folder) / "adapter_model.safetensors", keep=0.9)
    folder, info = ensure_stage1(experiment, old)
    assert not info["reused"] and old.calls == 3 and "no readable safetensors file" in info["retrained"]


# -- a stage-1 folder the user gives (model.stage1: <folder>) ------------------------------------------------
@pytest.fixture
def no_ray(tmp_path, monkeypatch):
    """The dry run must stop before Ray: a test that reaches ``ray.init`` fails."""
    import ray

    def started(*args, **kwargs):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", started)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)


def given_stage1(tmp_path, folder: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: t
        model:
          name_or_path: "tiny:xlm-roberta"
          stage1: {folder}
        task: {{name: nusax, languages: [jav]}}
        training: {{epochs: 2}}
        """)
    )
    return path


@pytest.mark.parametrize("manifest", [True, False], ids=["with-sha256.json", "by-hand"])
def test_a_damaged_stage1_folder_the_user_gives_stops_the_dry_run_naming_the_file(tmp_path, capsys, no_ray, manifest):
    from flare_ray.cli.tune import main

    folder = adapter_folder(tmp_path / "stage1")
    if manifest:
        write_manifest(folder)
    path = given_stage1(tmp_path, folder)
    assert load_experiment(path).model.stage1 == folder  # intact, with or without a manifest (peft's): accepted
    assert main([str(path), "--dry-run"]) == 0
    capsys.readouterr()

    weights = folder / "adapter_model.safetensors"
    truncate(weights)
    with pytest.raises(ExperimentConfigError) as info:
        load_experiment(path)
    assert main([str(path), "--dry-run"]) == 2
    out, err = capsys.readouterr()
    assert str(weights) in str(info.value) and str(weights) in err
    assert "line 4, model.stage1:" in err and "truncated" in err
    assert "reused" not in out + err and "resolved config" not in out


def test_an_altered_file_of_a_stage1_folder_with_a_manifest_is_named(tmp_path, no_ray):
    folder = adapter_folder(tmp_path / "stage1")
    write_manifest(folder)
    (folder / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 3}))  # same size, parses
    with pytest.raises(ExperimentConfigError, match="adapter_config.json does not match the SHA-256"):
        load_experiment(given_stage1(tmp_path, folder))


def test_a_trial_merging_a_damaged_stage1_folder_names_the_file(tmp_path):
    """Where the dry run cannot look (a URI, fetched by each trial): the merge names the file, not safetensors'
    'invalid header length'."""
    from flare_ray.training.setup import merge_stage1

    folder = adapter_folder(tmp_path / "stage1")
    truncate(folder / "adapter_model.safetensors", keep=0.001)
    with pytest.raises(ValueError, match=r"model\.stage1: .*adapter_model\.safetensors is no readable safetensors"):
        merge_stage1(None, folder)


# -- translations ----------------------------------------------------------------------------------------
class FakeTranslator:
    """A model-free translator that counts the segments it is asked for."""

    def __init__(self) -> None:
        self.segments = 0

    def __call__(self, segments, config):
        from flare_ray.translate.translator import Translation

        self.segments += len(segments)
        return [Translation("~ " + s.text, False) for s in segments], {"ray": "none (test)"}


def translate_config(tmp_path):
    from flare_ray.translate.config import parse_config

    return parse_config(
        {
            "task": {"name": "nusax", "language": "jav", "max_records": {"validation": 6}},
            "roles": ["validation"],
            "mt_dir": tmp_path / "mt",
        }
    )


def test_a_damaged_translation_with_a_digest_is_made_again_and_one_without_is_read(tmp_path, caplog):
    from flare_ray.digests import file_problem
    from flare_ray.translate import pipeline
    from flare_ray.translate.store import digest_path

    config, translator = translate_config(tmp_path), FakeTranslator()
    (made,) = pipeline.run(config, translate=translator)
    split, first = made.path, translator.segments
    assert first > 0 and digest_path(split).is_file() and file_problem(split) is None
    assert pipeline.run(config, translate=translator)[0].cached and translator.segments == first

    truncate(split)
    with caplog.at_level(logging.WARNING, logger="flare_ray.translate"):
        (again,) = pipeline.run(config, translate=translator)
    assert not again.cached and translator.segments == 2 * first and file_problem(split) is None
    assert any(str(split) in r.getMessage() and "translating it again" in r.getMessage() for r in caplog.records)

    # without a digest (an earlier version's split, or one shipped with the data): read as it is
    digest_path(split).unlink()
    (kept,) = pipeline.run(config, translate=translator)
    assert kept.cached and translator.segments == 2 * first and not digest_path(split).exists()


def test_a_damaged_translation_in_a_given_mt_dir_stops_the_sweep_before_ray(tmp_path, no_ray):
    """A ``task.mt_dir`` the config names is not the sweep's to make again: a split there that fails its digest
    is an error naming it; one without a digest is read."""
    from flare_ray.translate import pipeline
    from flare_ray.translate.store import digest_path

    (made,) = pipeline.run(translate_config(tmp_path), translate=FakeTranslator())
    path = tmp_path / "exp.yaml"
    path.write_text(
        textwrap.dedent(f"""\
        name: t
        model: {{name_or_path: "tiny:xlm-roberta"}}
        task: {{name: nusax, languages: [jav], max_records: {{validation: 6}}, splits: {{validation: mt}},
                mt_dir: {tmp_path / "mt"}}}
        training: {{epochs: 2}}
        """)
    )
    assert not load_experiment(path).translates
    data = bytearray(made.path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    made.path.write_bytes(bytes(data))
    with pytest.raises(ExperimentConfigError) as info:
        load_experiment(path)
    assert f"task.mt_dir: {made.path} does not match the SHA-256" in str(info.value)
    digest_path(made.path).unlink()  # (the check is the digest's: with none, the split is read as before)
    assert "does not match" not in _problems(path)


def _problems(path: Path) -> str:
    try:
        load_experiment(path)
    except ExperimentConfigError as err:
        return str(err)
    return ""


# -- the shared source cache -----------------------------------------------------------------------------
def test_a_truncated_source_cache_shard_is_rebuilt_as_a_clean_build(tmp_path, capsys, monkeypatch):
    """Another trial process (a new cache) finds the shared rows truncated: it warns in its log, builds them
    again and reads them, and they equal the rows of the clean build."""
    import torch
    from safetensors.torch import load_file

    from flare_ray.fusion.cache import INDEX_FILE, SHARDS_FILE
    from flare_ray.training import source_cache
    from flare_ray.training.setup import build_trial

    experiment = load_experiment(
        QUICKSTART,
        [f"storage_path={tmp_path}", "task.max_records={train: 16, validation: 8, test: 8}", "search.space={}"],
    )
    trial = build_trial(experiment, "jav")
    records = [r for role in ("train", "validation", "test") for r in trial.splits[role]]

    def share():
        monkeypatch.setattr(source_cache, "_CURRENT", {})  # a new trial process: a new cache
        cache = source_cache.attach_source_cache(trial.model, experiment)
        done = source_cache.share_source_cache(
            cache, trial.model, experiment, trial.encoder, records, torch.device("cpu"), contextlib.nullcontext()
        )
        return cache, done

    cache, done = share()
    where = Path(done["where"])
    assert done["source_cache"] == "built" and (where / MANIFEST).is_file()
    clean = {k: v.clone() for k, v in load_file(where / SHARDS_FILE).items()}  # (the file is mapped)
    clean_index = json.loads((where / INDEX_FILE).read_text())
    assert share()[1]["source_cache"] == "read"
    capsys.readouterr()

    truncate(where / SHARDS_FILE)
    cache, done = share()
    log = capsys.readouterr().out
    assert done["source_cache"] == "rebuilt" and len(cache.shards) == len(clean_index["rows"])
    assert f"warning: source cache {where}: {where / SHARDS_FILE} has" in log and "building its rows again" in log
    rebuilt = load_file(where / SHARDS_FILE)
    assert json.loads((where / INDEX_FILE).read_text()) == clean_index
    assert rebuilt.keys() == clean.keys() and all(torch.equal(rebuilt[k], clean[k]) for k in clean)
    key = next(iter(cache.shards.index))
    start, length = clean_index["rows"][key.hex()]
    assert torch.equal(cache.get(key)[0], clean["slot0"][start : start + length])  # the trial reads the new rows
    assert share()[1]["source_cache"] == "read"  # and the next trial as before


def test_source_rows_of_an_earlier_version_without_a_manifest_are_rebuilt(tmp_path):
    """Saved rows without ``sha256.json`` (an unfinished save, or an earlier version's) are not mapped: a
    truncated file there would crash the trial on its first read past the end."""
    import torch

    from flare_ray.fusion import SourceCache
    from flare_ray.fusion.cache import SHARDS_FILE, open_shards

    cache = SourceCache(max_bytes=2**20)
    cache.store(b"k" * 16, [torch.ones(3, 4, dtype=torch.float16)])
    cache.save(tmp_path / "rows")
    shards, problem = open_shards(tmp_path / "rows")
    assert problem is None and torch.equal(shards.get(b"k" * 16)[0], torch.ones(3, 4, dtype=torch.float16))
    (tmp_path / "rows" / MANIFEST).unlink()
    shards, problem = open_shards(tmp_path / "rows")
    assert shards is None and f"has no {MANIFEST}" in problem
    write_manifest(tmp_path / "rows")
    truncate(tmp_path / "rows" / SHARDS_FILE, keep=0.95)
    shards, problem = open_shards(tmp_path / "rows")
    assert shards is None and problem.startswith(f"{tmp_path / 'rows' / SHARDS_FILE} has ") and "truncated" in problem


def test_a_stage1_folder_trained_again_in_place_is_another_source_cache_state(tmp_path, tiny_path, monkeypatch):
    """The source cache is keyed by stage 1's files (its manifest), not only by its folder: rows computed on
    the damaged folder's stage 1 are not read by trials of the one trained again in its place."""
    from flare_ray.training import source_cache
    from tests.helpers import flare

    monkeypatch.setattr(source_cache, "_CURRENT", {})
    folder = adapter_folder(tmp_path / "stage1")
    write_manifest(folder)
    experiment = load_experiment(QUICKSTART, [f"storage_path={tmp_path}", f"model.stage1={folder}"])
    model, _ = flare(tiny_path, "encoder", fusion="add")
    before = source_cache.state_key(model, experiment)
    assert source_cache.state_key(model, experiment) == before
    save_file({"lora_A": np.full((64, 64), 2.0, dtype=np.float32)}, str(folder / "adapter_model.safetensors"))
    write_manifest(folder)
    assert source_cache.state_key(model, experiment) != before

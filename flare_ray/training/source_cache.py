"""Which source cache a trial's FLARE model reads through (:mod:`flare_ray.fusion.cache`), and the sweep's
shared copy of it.

One cache per trial process, for one model state: the base model, its stage-1 merge, quantization and
dtype, the precision, the source representation, the fused sites and FLARE-MT's encoder. Rows are keyed
by their source token ids, so the tokenizer, the text and the truncation need no key of their own. Tune
runs the next trial of a search in the same process where it can, so a later trial on the same model
state reads the rows the earlier ones computed; a trial on another state replaces the cache (one at a
time, so its size limit holds per process).

Shared by every process and node of the sweep (:func:`share_source_cache`): the first trial of a model
state builds it before its first step, with the source pass over its training, validation and test
records (the passes its first epoch and its scoring would otherwise run), and writes it to the sweep's storage,
``<storage_path>/source_cache/<state>/`` (safetensors rows, a JSON index and their ``sha256.json``;
``complete`` last). Rows that fail their check when read (a truncated or altered file) are built again, with
a warning in the trial's log, instead of failing the trial. A named
Ray actor lets one trial build a state at a time; the others wait for ``complete``, then read the rows by
memory map (after one download per node where the storage is remote). A builder that fails gives its claim
back and a waiting trial builds instead; one that dies leaves the others to compute their own rows after
:data:`WAIT_SECONDS`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, ContextManager, Iterable

import torch

from flare_ray.digests import MANIFEST
from flare_ray.experiment import ExperimentConfig
from flare_ray.fusion import FlareModel, SourceCache, SourceShards
from flare_ray.fusion.cache import open_shards
from flare_ray.fusion.provider import SourceBatch
from flare_ray.storage import download, exists, join, local_folder, upload, write_text

try:
    import ray
except ModuleNotFoundError:  # the GPU machine's step benchmarks carry no Ray (benchmarks/gpu/README.md)
    ray = None

_CURRENT: dict[tuple, SourceCache] = {}
BUILDS_ACTOR = "flare_ray.source_cache_builds"
BUILDS_NAMESPACE = "flare_ray"
COMPLETE = "complete"
WAIT_SECONDS = 1800.0  # how long a trial waits for another's build before computing its own rows
POLL_SECONDS = 1.0


def state_key(model: FlareModel, experiment: ExperimentConfig) -> tuple:
    """What a cached row depends on. The MT encoder counts for FLARE-MT only: a FLARE trial of a grid that sets
    ``method.flare.mt_encoder`` for its FLARE-MT cells runs the source pass (another source, another layout of
    rows), and must not share FLARE-MT's cache. Stage 1 counts by its files where its ``sha256.json`` lists
    them (a damaged stage-1 folder trained again in the same place is another model state)."""
    flare, spec = experiment.method.flare, experiment.model
    mt_encoder = flare.mt_encoder if experiment.method.kind == "flare_mt" else None
    return (
        spec.name_or_path,
        _stage1_identity(spec.stage1),
        spec.quantization,
        spec.dtype,
        experiment.training.precision,
        str(flare.source_representation),
        mt_encoder,
        tuple(site.name for site in model.plan.sites),
    )


def _stage1_identity(stage1) -> str:
    """The stage-1 folder, with the hash of its manifest where it has one on this machine."""
    manifest = Path(str(stage1)) / MANIFEST
    if stage1 in (None, "auto") or not manifest.is_file():
        return str(stage1)
    return f"{stage1}#{hashlib.sha256(manifest.read_bytes()).hexdigest()[:16]}"


def attach_source_cache(model, experiment: ExperimentConfig, zero3: bool = False) -> SourceCache | None:
    """Give a FLARE ``model`` this process's cache for its model state (a new one where the state changed);
    None where there is nothing to cache (another method), it is off (``training.source_cache_gb: 0``), or
    under ZeRO-3 (a rank that read its rows back would skip a collective pass that the others run)."""
    if not isinstance(model, FlareModel) or experiment.training.source_cache_gb <= 0 or zero3:
        return None
    key = state_key(model, experiment)
    if key not in _CURRENT:
        _CURRENT.clear()
        _CURRENT[key] = SourceCache(max_bytes=int(experiment.training.source_cache_gb * 2**30))
    cache = _CURRENT[key]
    model.cache_source(cache)
    return cache


def share_source_cache(
    cache: SourceCache,
    model: FlareModel,
    experiment: ExperimentConfig,
    encoder,
    records: Iterable[Any],
    device: torch.device,
    autocast: ContextManager,
) -> dict[str, Any]:
    """Point ``cache`` at the sweep's shared rows of the model's state, building them first where no trial
    has (``records``: the examples whose source rows to build), or where the rows there fail their check
    (:func:`~flare_ray.fusion.cache.open_shards`: a truncated or altered file, or one that does not load):
    then they are built again, with a warning in the trial's log, rather than failing the trial. What happened,
    for the trial's log and metrics: ``{"source_cache": "read" | "built" | "rebuilt" | "in memory" | "own",
    "seconds": ..., "where": ...}``."""
    if cache.shards is not None:
        return {"source_cache": "in memory", "seconds": 0.0, "where": ""}
    digest = hashlib.blake2b(repr(state_key(model, experiment)).encode(), digest_size=12).hexdigest()
    where = join(experiment.storage_path, "source_cache", digest)
    started = time.perf_counter()
    build = partial(_build, cache, model, encoder, records, experiment.training.eval_batch_size, device, autocast)
    outcome, shards, warned = "read", None, set()
    with _builds() as claim:
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            if exists(join(where, COMPLETE)):
                shards, problem = _open(where, digest)
                if shards is not None:
                    break
                _warn(where, problem, warned)
            if claim(digest, True):
                try:
                    shards, outcome = _build_or_open(where, digest, build, warned)
                finally:
                    claim(digest, False)  # built, or failed: another trial may build it
                break
            if time.monotonic() > deadline:
                break
            time.sleep(POLL_SECONDS)
    if shards is None:  # no rows readable in time: this trial computes its own
        return {"source_cache": "own", "seconds": time.perf_counter() - started, "where": where}
    cache.shards = shards
    return {"source_cache": outcome, "seconds": time.perf_counter() - started, "where": where}


def _build_or_open(
    where: str, digest: str, build: Callable[[str], None], warned: set[str]
) -> tuple[SourceShards | None, str]:
    """Under the claim on ``digest``: the rows at ``where`` if another trial built them meanwhile (``complete``
    is written before a claim is given back), else built now (damaged ones removed first); and how."""
    shards, problem = _open(where, digest) if exists(join(where, COMPLETE)) else (None, None)
    if shards is not None:
        return shards, "read"
    if problem is not None:
        _warn(where, problem, warned)
        _discard(where, digest)
    build(where)
    shards, after = _open(where, digest)
    _warn(where, after, warned)  # (built just now and still unreadable: the trial computes its own rows)
    return shards, "rebuilt" if problem is not None else "built"


def _open(where: str, digest: str) -> tuple[SourceShards | None, str | None]:
    """The shared rows at ``where``, checked (:func:`~flare_ray.fusion.cache.open_shards`); a node's copy of
    remote rows that fails is fetched again once before the rows there count as damaged."""
    local = _local(where, digest)
    shards, problem = open_shards(local)
    if shards is None and local_folder(where) is None:
        shutil.rmtree(local, ignore_errors=True)  # (a process that maps its files keeps them)
        shards, problem = open_shards(_local(where, digest))
    return shards, problem


def _warn(where: str, problem: str | None, warned: set[str]) -> None:
    """One line in the trial's log per problem found (a waiting trial looks again every second)."""
    if problem is not None and problem not in warned:
        warned.add(problem)
        print(f"warning: source cache {where}: {problem}: building its rows again", flush=True)


def _discard(where: str, digest: str) -> None:
    """Remove damaged shared rows before they are built again: ``complete`` first (no trial reads them from
    then on), then the files, unlinked rather than overwritten (a process that maps them keeps its copy). On
    remote storage the new files replace them, object by object, ``complete`` last again; this node's copy is
    removed."""
    folder = local_folder(where)
    if folder is None:
        shutil.rmtree(Path(tempfile.gettempdir()) / "flare_ray-source-cache" / digest, ignore_errors=True)
        return
    (folder / COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(folder, ignore_errors=True)


def _build(
    cache: SourceCache,
    model: FlareModel,
    encoder,
    records: Iterable[Any],
    batch_size: int,
    device: torch.device,
    autocast: ContextManager,
    where: str,
) -> None:
    """The source pass over ``records`` into ``cache`` (as the training steps would fill it), then written
    to ``where`` with ``complete`` last."""
    rows = list(records)
    with torch.no_grad(), autocast:
        for start in range(0, len(rows), batch_size):
            inputs = encoder.predict_batch(rows[start : start + batch_size]).inputs  # no labels needed
            model.source.states(SourceBatch.pop_from({k: v.to(device) for k, v in inputs.items()}))
    with tempfile.TemporaryDirectory(prefix="flare_ray-source-cache-") as tmp:
        cache.save(Path(tmp) / "rows")
        upload(Path(tmp) / "rows", where)
    write_text(join(where, COMPLETE), f"{len(cache)} rows, {cache.nbytes / 2**30:.3f} GB\n")


def _local(where: str, digest: str) -> Path:
    """A local folder holding the shared rows: the storage's own, or one download per node."""
    folder = local_folder(where)
    if folder is not None:
        return folder
    copy = Path(tempfile.gettempdir()) / "flare_ray-source-cache" / digest
    if not (copy / COMPLETE).is_file():
        partial = copy.with_name(f"{digest}.{os.getpid()}")
        download(where, partial)
        with contextlib.suppress(OSError):  # another process of this node may have put its copy there first
            partial.replace(copy)
    return copy


@contextlib.contextmanager
def _builds():
    """``claim(digest, True)``: whether this process may build that state now (no one else is);
    ``claim(digest, False)``: give it back. Across the Ray cluster, through a named actor; without Ray,
    always."""
    if ray is None or not ray.is_initialized():
        yield lambda digest, take: True
        return
    # detached: owned by no trial process (a trial that made it and ended would take it along while another one
    # still asks it); it ends with the cluster, holding no resources. Detached actors live in a named namespace.
    actor = _Builds.options(
        name=BUILDS_ACTOR, namespace=BUILDS_NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()
    me = f"{os.getpid()}@{ray.get_runtime_context().get_node_id()}"
    yield lambda digest, take: ray.get(actor.claim.remote(digest, me) if take else actor.release.remote(digest, me))


class _Builds:
    """Who builds which state now (the named actor behind :func:`_builds`)."""

    def __init__(self) -> None:
        self.owners: dict[str, str] = {}

    def claim(self, digest: str, owner: str) -> bool:
        return self.owners.setdefault(digest, owner) == owner

    def release(self, digest: str, owner: str) -> bool:
        if self.owners.get(digest) == owner:
            del self.owners[digest]
        return True


if ray is not None:
    _Builds = ray.remote(num_cpus=0)(_Builds)  # made at import, as the decorator would

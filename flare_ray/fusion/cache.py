"""The source cache: each source example's representations, computed once and reused.

The source pass runs the frozen base model (or FLARE-MT's frozen MT encoder) on fixed text with dropout
off, so an example's representations are the same in every epoch and every trial on the same model. A
:class:`SourceCache` keeps them per example, keyed by the example's own source token ids (which already
say the text, the tokenizer and the truncation), in half precision and only its real tokens, where the
source pass ran (the GPU on a GPU). One cache
serves one model state: the owner keys it by the base model, stage 1, the source representation and the
fused sites (:mod:`flare_ray.training.source_cache`).

:class:`CachedSource` is a source provider (see :mod:`~flare_ray.fusion.provider`) around the model's own
one: rows it holds are read back, the others computed by the inner provider in one sub-batch and stored,
until the cache reaches its size limit; past it, missing rows are computed every time (and the cache says
so in :attr:`SourceCache.full`). A cache can be written to a folder (:meth:`SourceCache.save`: one
safetensors file per stored tensor of a row, rows end to end, a JSON index and, last, their ``sha256.json``)
and another process, on any node, reads it back by memory map (:class:`SourceShards`, given as
``SourceCache.shards``, opened by :func:`open_shards`, which checks the files first): rows it holds are copied
into the cache when first read. Positions that are padding get zeros instead of the pass's values there,
which no fusion reads (they are masked), so a cached step equals an uncached one up to the half precision.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from flare_ray.digests import folder_problem, write_manifest

from .provider import SourceBatch, SourceProvider
from .sites import FusionSite
from .source import SourceStates


@dataclass
class SourceCache:
    """Per-example source representations, at most ``max_bytes`` of them, stored as ``dtype`` on ``device``.

    By default (``None``) rows stay where the source pass ran (a GPU's memory on a GPU: reading them back
    then costs no host transfer, so ``max_bytes`` is GPU memory there) in the pass's precision when it is
    bfloat16, else float16."""

    max_bytes: int
    dtype: torch.dtype | None = None
    device: torch.device | str | None = None
    hits: int = 0  # rows read back
    misses: int = 0  # rows computed (stored, or not once full)
    full: bool = False  # a row was not stored: the limit is reached
    rows: dict[bytes, list[torch.Tensor]] = field(default_factory=dict)
    layout: dict[str, int] | None = None  # fused module -> its tensor among a row's (sites of a block share one)
    nbytes: int = 0
    shards: "SourceShards | None" = None  # rows written by another process (read-only), read when not in ``rows``

    def __len__(self) -> int:
        return len(self.rows)

    def get(self, key: bytes) -> list[torch.Tensor] | None:
        """The row of ``key``: from memory, else from the shards (then kept in memory, room permitting)."""
        row = self.rows.get(key)
        if row is None and self.shards is not None:
            row = self.shards.get(key)
            if row is not None:
                if self.layout is None:
                    self.layout = self.shards.layout
                row = [t.to(self.device or "cpu") for t in row]
                self.store(key, row)
        return row

    def save(self, folder: Path) -> None:
        """Write the rows held in memory to ``folder`` (made; read back with :class:`SourceShards`)."""
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        keys = list(self.rows)
        slots = len(self.rows[keys[0]]) if keys else 0
        index, start = {}, 0
        for key in keys:
            length = self.rows[key][0].shape[0]
            index[key.hex()] = [start, length]
            start += length
        tensors = {f"slot{i}": torch.cat([self.rows[k][i].cpu() for k in keys]) for i in range(slots)}
        save_file(tensors, str(folder / SHARDS_FILE))
        (folder / INDEX_FILE).write_text(json.dumps({"layout": self.layout, "rows": index}))
        write_manifest(folder)  # last: checked before another process maps the rows (open_shards)

    def stats(self, since: tuple[int, int] = (0, 0)) -> dict[str, float]:
        """The share of rows read back among those looked up after ``since`` (``(hits, misses)`` then), the
        rows held and their size."""
        hits, misses = self.hits - since[0], self.misses - since[1]
        return {
            "source_cache_hit_rate": hits / (hits + misses) if hits + misses else 0.0,
            "source_cache_rows": float(len(self)),
            "source_cache_gb": self.nbytes / 2**30,
        }

    def store(self, key: bytes, tensors: list[torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors)
        if self.nbytes + size > self.max_bytes:
            self.full = True
            return
        self.rows[key] = tensors
        self.nbytes += size


def row_keys(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[bytes]:
    """One key per row: a digest of its real tokens' ids (padding, on either side, does not count)."""
    ids, mask = input_ids.detach().cpu(), attention_mask.detach().cpu().bool()  # no copy when on the host
    return [hashlib.blake2b(ids[i][mask[i]].numpy().tobytes(), digest_size=16).digest() for i in range(ids.shape[0])]


class CachedSource:
    """Source provider: ``inner``'s representations through ``cache`` (``mt``: the inputs are FLARE-MT's)."""

    def __init__(self, inner: SourceProvider, cache: SourceCache, mt: bool = False) -> None:
        self.inner, self.cache, self.mt = inner, cache, mt

    def site_input(self, states: SourceStates, site: FusionSite) -> torch.Tensor:
        return self.inner.site_input(states, site)

    def states(self, batch: SourceBatch) -> SourceStates | None:
        inputs = batch.inputs(mt=self.mt)
        if inputs is None:
            return None
        ids, mask = inputs
        if batch.source_position_ids is not None:  # its keys are rows: padding-free batches keep the source padded
            raise ValueError("the source cache reads padded source rows; got a flattened source (source_position_ids)")
        cache = self.cache
        if cache.device is None:
            cache.device = ids.device
        # Where the real tokens are, worked out once on the host (one copy; boolean indexing on a GPU would
        # wait for the device at every use) and sent back as indices.
        host_ids, real = ids.detach().cpu(), mask.detach().cpu().bool()
        keys = row_keys(host_ids, real)
        found = {i: row for i, key in enumerate(keys) if (row := cache.get(key)) is not None}
        missing = [i for i in range(len(keys)) if i not in found]
        computed: dict[int, list[torch.Tensor]] = {}
        if missing:
            index = torch.tensor(missing, device=ids.device)
            sub = {
                "mt_input_ids" if self.mt else "source_input_ids": ids[index],
                "mt_attention_mask" if self.mt else "source_attention_mask": mask[index],
            }
            states = self.inner.states(SourceBatch(**sub))
            tensors, layout = _unique(states.hidden)
            if cache.layout is None:
                cache.layout = layout
            if cache.dtype is None:
                cache.dtype = torch.bfloat16 if tensors[0].dtype == torch.bfloat16 else torch.float16
            for j, i in enumerate(missing):
                positions = real[i].nonzero().squeeze(1).to(ids.device, non_blocking=True)
                computed[i] = [t[j].index_select(0, positions).to(cache.device, cache.dtype) for t in tensors]
                cache.store(keys[i], computed[i])
        cache.misses += len(missing)
        cache.hits += len(keys) - len(missing)
        layout = cache.layout
        rows = [computed[i] if i in computed else found[i] for i in range(len(keys))]
        # In the precision the source pass would give: autocast's, else float32 (a float16 tensor beside a
        # bfloat16 autocast region is refused by some CPU kernels). One copy per tensor, not per row.
        device = ids.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
        flat = real.flatten().nonzero().squeeze(1).to(ids.device, non_blocking=True)
        hidden = []
        with torch.autocast(device, enabled=False):  # CPU autocast refuses to promote float16 (torch.cat)
            for slot in range(len(rows[0])):
                width = rows[0][slot].shape[-1]
                values = torch.cat([row[slot].to(cache.device) for row in rows]).to(
                    ids.device, dtype, non_blocking=True
                )
                out = torch.zeros(ids.numel(), width, dtype=dtype, device=ids.device).index_copy_(0, flat, values)
                hidden.append(out.view(*ids.shape, width))
        if layout == {}:  # one tensor for every site (FLARE-MT's latent translation)
            return SourceStates(hidden=hidden[0], attention_mask=mask)
        return SourceStates(hidden={name: hidden[slot] for name, slot in layout.items()}, attention_mask=mask)


def _unique(hidden: dict[str, torch.Tensor] | torch.Tensor) -> tuple[list[torch.Tensor], dict[str, int]]:
    """The distinct tensors of a pass's output, and which one each fused module reads (``{}``: one for all)."""
    if isinstance(hidden, torch.Tensor):
        return [hidden], {}
    tensors: list[torch.Tensor] = []
    slots: dict[int, int] = {}
    layout = {}
    for name, tensor in hidden.items():
        if id(tensor) not in slots:
            slots[id(tensor)] = len(tensors)
            tensors.append(tensor)
        layout[name] = slots[id(tensor)]
    return tensors, layout


SHARDS_FILE, INDEX_FILE = "rows.safetensors", "index.json"


class SourceShards:
    """Rows a :class:`SourceCache` saved to ``folder``, read by index from a memory map (nothing is loaded
    until a row is asked for)."""

    def __init__(self, folder: Path) -> None:
        from safetensors import safe_open

        index = json.loads((Path(folder) / INDEX_FILE).read_text())
        self.layout: dict[str, int] | None = index["layout"]
        self.index = {bytes.fromhex(k): v for k, v in index["rows"].items()}
        self._file = safe_open(str(Path(folder) / SHARDS_FILE), framework="pt")
        self._slots = [self._file.get_slice(name) for name in sorted(self._file.keys(), key=lambda n: int(n[4:]))]

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: bytes) -> list[torch.Tensor] | None:
        where = self.index.get(key)
        if where is None:
            return None
        start, length = where
        return [slot[start : start + length] for slot in self._slots]


def open_shards(folder: Path) -> tuple[SourceShards | None, str | None]:
    """The rows a :class:`SourceCache` saved to ``folder``, checked first: ``(shards, None)``, or ``(None, what
    is wrong)`` naming the file, where a file does not match the ``sha256.json`` written with it (a truncated
    shard would fail a trial deep in a step, or crash it on a memory-mapped read past the end), there is no
    ``sha256.json`` (an unfinished save, or an earlier version's: the owner builds the rows again), or the
    files do not load."""
    from safetensors import SafetensorError

    problem = folder_problem(folder)
    if problem is not None:
        return None, problem
    try:
        return SourceShards(folder), None
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as err:
        return None, f"{folder} does not load ({type(err).__name__}: {err})"

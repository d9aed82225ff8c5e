"""Which source cache a trial's FLARE model reads through (:mod:`flare_ray.fusion.cache`).

One cache per trial process, for one model state: the base model, its stage-1 merge, quantization and
dtype, the source representation, the fused sites and FLARE-MT's encoder. Rows are keyed by their source
token ids, so the tokenizer, the text and the truncation need no key of their own. Tune runs the next
trial of a search in the same process where it can, so a later trial on the same model state reads the
rows the earlier ones computed; a trial on another state replaces the cache (one at a time, so its size
limit holds per process).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flare_ray.fusion import FlareModel, SourceCache

if TYPE_CHECKING:
    from flare_ray.experiment import ExperimentConfig

_CURRENT: dict[tuple, SourceCache] = {}


def attach_source_cache(model, experiment: "ExperimentConfig", zero3: bool = False) -> SourceCache | None:
    """Give a FLARE ``model`` this process's cache for its model state (a new one where the state changed);
    None where there is nothing to cache (another method), it is off (``training.source_cache_gb: 0``), or
    under ZeRO-3 (a rank that read its rows back would skip a collective pass that the others run)."""
    if not isinstance(model, FlareModel) or experiment.training.source_cache_gb <= 0 or zero3:
        return None
    flare, spec = experiment.method.flare, experiment.model
    key = (spec.name_or_path, str(spec.stage1), spec.quantization, spec.dtype,
           str(flare.source_representation), flare.mt_encoder, tuple(site.name for site in model.plan.sites))  # fmt: skip
    if key not in _CURRENT:
        _CURRENT.clear()
        _CURRENT[key] = SourceCache(max_bytes=int(experiment.training.source_cache_gb * 2**30))
    cache = _CURRENT[key]
    model.cache_source(cache)
    return cache

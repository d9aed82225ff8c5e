"""The Ray Data job: NLLB-200 translation of text segments, greedy, batched, one model per actor.

:class:`NllbTranslator` is the callable class given to ``map_batches``: Ray
Data starts ``concurrency`` actors, each loads the model once (on a GPU when it
has one) and translates batch after batch. The same code serves the real NLLB
tokenizer and the tiny test one (also an ``NllbTokenizer``): ``src_lang`` puts
the source language code on the input, and ``forced_bos_token_id`` makes the
target language code the first generated token.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:  # the actors import this module: keep it light
    from .config import TranslateConfig

logger = logging.getLogger("flare_ray.translate")

GREEDY = {"num_beams": 1, "do_sample": False}


class Segment(NamedTuple):
    """One text to translate, with its NLLB source and target codes."""

    src: str
    tgt: str
    text: str


class Translation(NamedTuple):
    text: str
    truncated: bool  # the input was longer than max_length tokens and was cut


def _log_to_stderr() -> None:
    """In an actor process: send this package's INFO logs to stderr (Ray shows them on the driver)."""
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
        logger.setLevel(logging.INFO)


class NllbTranslator:
    """Translates a batch of segments (columns ``src``, ``tgt``, ``text``) with a model loaded once."""

    def __init__(self, model: str, max_length: int, dtype: str, use_gpu: bool) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from flare_ray.models.loading import resolve_name_or_path

        _log_to_stderr()
        model = resolve_name_or_path(model)  # tiny:m2m_100, the offline test model, built on first use
        if use_gpu and not torch.cuda.is_available():
            raise RuntimeError("this translation actor was given a GPU, but torch sees no CUDA device")
        self.device = torch.device("cuda" if use_gpu else "cpu")
        self.max_length = max_length
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if not hasattr(self.tokenizer, "src_lang"):
            raise ValueError(
                f"{model}: {type(self.tokenizer).__name__} has no src_lang; expected an NLLB-200 tokenizer"
            )
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model, dtype=getattr(torch, dtype)).to(self.device).eval()
        logger.info("loaded MT model %s (%s) on %s in process %d", model, dtype, self.device, os.getpid())

    def _code_id(self, code: str) -> int:
        token_id = self.tokenizer.convert_tokens_to_ids(code)
        if token_id is None or token_id == self.tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no language code {code!r}; expected an NLLB-200 checkpoint")
        return token_id

    def translate(self, texts: list[str], src: str, tgt: str) -> tuple[list[str], list[bool]]:
        """Greedy translations of ``texts`` from ``src`` into ``tgt`` (NLLB codes), and which inputs were cut."""
        import torch

        self.tokenizer.src_lang = src
        src_id = self._code_id(src)
        lengths = [len(ids) for ids in self.tokenizer(texts)["input_ids"]]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length)
        if src_id not in inputs["input_ids"][0].tolist():
            raise ValueError(
                f"setting src_lang={src!r} did not put its code on the input; expected an NLLB-200 tokenizer"
            )
        with torch.inference_mode():
            output = self.model.generate(
                **inputs.to(self.device),
                forced_bos_token_id=self._code_id(tgt),
                max_new_tokens=self.max_length,
                **GREEDY,
            )
        return self.tokenizer.batch_decode(output, skip_special_tokens=True), [n > self.max_length for n in lengths]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        translation = np.empty(len(batch["text"]), dtype=object)
        truncated = np.zeros(len(batch["text"]), dtype=bool)
        pairs = dict.fromkeys(zip(batch["src"].tolist(), batch["tgt"].tolist()))
        for src, tgt in pairs:
            rows = np.flatnonzero((batch["src"] == src) & (batch["tgt"] == tgt))
            texts, cut = self.translate(batch["text"][rows].tolist(), src, tgt)
            translation[rows], truncated[rows] = texts, cut
        return {"key": batch["key"], "translation": translation, "truncated": truncated}


def connect_ray() -> str:
    """Connect to the Ray cluster at ``RAY_ADDRESS``, else start a local Ray (on 127.0.0.1 only); returns which."""
    import ray

    from flare_ray.local_ray import LOOPBACK, init_ray

    address = os.environ.get("RAY_ADDRESS")
    if ray.is_initialized():
        return "the Ray already initialised in this process"
    if address and address != "local":
        logger.info("connecting to the Ray cluster at %s (RAY_ADDRESS)", address)
    if init_ray():
        logger.info("RAY_ADDRESS names no cluster: started a local Ray, listening on %s only", LOOPBACK)
        return "local Ray"
    return f"Ray cluster at {address}" if address else "the Ray cluster started on this machine (ray start)"


def resources(config: TranslateConfig) -> dict[str, Any]:
    """GPUs and CPUs per actor, number of actors and weight dtype, defaults resolved against the cluster."""
    import ray

    cluster_gpus = ray.cluster_resources().get("GPU", 0)
    num_gpus = config.num_gpus if config.num_gpus is not None else (1 if cluster_gpus > 0 else 0)
    if config.concurrency is not None:
        concurrency = config.concurrency
    else:
        concurrency = max(1, int(cluster_gpus // num_gpus)) if num_gpus > 0 else 1
    dtype = config.dtype if config.dtype != "auto" else ("bfloat16" if num_gpus > 0 else "float32")
    return {
        "num_gpus": num_gpus,
        "num_cpus": config.num_cpus,
        "concurrency": concurrency,
        "dtype": dtype,
        "batch_size": config.batch_size,
        "cluster_gpus": cluster_gpus,
    }


def translate_with_ray(segments: list[Segment], config: TranslateConfig) -> tuple[list[Translation], dict[str, Any]]:
    """Translate ``segments`` as one Ray Data job; returns translations in order, and how it ran."""
    import ray

    where = connect_ray()
    run = {"ray": where, **resources(config)}
    logger.info(
        "translating %d segments with %s: %d actor(s), %s GPU and %s CPU each, batches of %d, %s",
        len(segments),
        config.model,
        run["concurrency"],
        run["num_gpus"],
        run["num_cpus"],
        config.batch_size,
        run["dtype"],
    )
    # Longest first, grouped by direction: batches of similar length, and an out-of-memory error comes early.
    order = sorted(range(len(segments)), key=lambda i: (segments[i].src, segments[i].tgt, -len(segments[i].text)))
    items = [{"key": i, **segments[i]._asdict()} for i in order]
    start = time.perf_counter()
    dataset = ray.data.from_items(items).map_batches(
        NllbTranslator,
        fn_constructor_kwargs={
            "model": config.model,
            "max_length": config.max_length,
            "dtype": run["dtype"],
            "use_gpu": run["num_gpus"] > 0,
        },
        batch_size=config.batch_size,
        compute=ray.data.ActorPoolStrategy(size=run["concurrency"]),
        num_gpus=run["num_gpus"],
        num_cpus=config.num_cpus,
    )
    results: list[Translation | None] = [None] * len(segments)
    for row in dataset.iter_rows():
        results[row["key"]] = Translation(str(row["translation"]), bool(row["truncated"]))
    run["seconds"] = round(time.perf_counter() - start, 3)
    missing = sum(r is None for r in results)
    if missing:
        raise RuntimeError(f"the translation job returned no translation for {missing} of {len(segments)} segments")
    return results, run

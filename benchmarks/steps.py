"""Training-step time of each method on one model and the same batches, through the project's own trial setup
(``build_trial``: the adapter each method trains, its batch encoder, NusaX's Javanese training records).

The model is XLM-R base's shape (12 blocks, hidden 768, 12 heads, MLP 3072) with random weights and the tiny
models' tokenizer: step time depends on the shapes, not on the weights' values. FLARE-MT's MT encoder is
NLLB-200-distilled-600M's encoder shape (12 blocks, d_model 1024, 16 heads, FFN 4096). ``--small`` uses the
tiny models instead (the suite's smoke run). Each method: ``--warmup`` steps, then the median of ``--steps``
timed steps (forward, backward, AdamW step) on the same batches; FLARE cached reads every batch's source
representations back from the source cache (filled by the warm-up pass over the same batches).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch

from flare_ray.experiment import ExperimentConfig

METHODS = ["lora", "flare", "flare_cached", "flare_mt", "flare_mt_cached", "input_fusion"]


def build_models(root: Path, small: bool) -> tuple[str, str]:
    """The target model's and the MT model's folders (built once under ``root``)."""
    from flare_ray.models.tiny import BOS, EOS, PAD, tiny_model_path, train_tokenizer

    if small:
        return str(tiny_model_path("xlm-roberta", cache_dir=root)), str(tiny_model_path("m2m_100", cache_dir=root))
    from transformers import (
        M2M100Config,
        M2M100ForConditionalGeneration,
        XLMRobertaConfig,
        XLMRobertaForSequenceClassification,
    )

    base, mt = root / "xlmr-base-shape", root / "nllb-600m-encoder-shape"
    ids = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    if not (base / "config.json").is_file():
        torch.manual_seed(0)
        config = XLMRobertaConfig(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            max_position_embeddings=514,
            type_vocab_size=1,
            vocab_size=2048,
            num_labels=3,
            **ids,
        )
        XLMRobertaForSequenceClassification(config).save_pretrained(base)
        train_tokenizer("xlm-roberta").save_pretrained(base)
    if not (mt / "config.json").is_file():
        tiny_mt = tiny_model_path("m2m_100", cache_dir=root)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tiny_mt)
        config = M2M100Config(
            d_model=1024,
            encoder_layers=12,
            decoder_layers=1,
            encoder_attention_heads=16,
            decoder_attention_heads=16,
            encoder_ffn_dim=4096,
            decoder_ffn_dim=4096,
            vocab_size=len(tokenizer),
            max_position_embeddings=1024,
            **ids,
        )
        M2M100ForConditionalGeneration(config).save_pretrained(mt)
        tokenizer.save_pretrained(mt)
    return str(base), str(mt)


def experiment(
    base: str,
    mt: str | None,
    kind: str,
    batch_size: int,
    max_length: int,
    target_modules: tuple[str, ...] = ("query", "value"),
    precision: str = "fp32",
    dtype: str = "float32",
    attn_implementation: str | None = None,
    compile: bool = False,
) -> ExperimentConfig:
    from flare_ray.experiment import validate_experiment

    return validate_experiment(
        {
            "name": "steps",
            "model": {"name_or_path": base, "stage1": None, "dtype": dtype, "attn_implementation": attn_implementation},
            "task": {"name": "nusax", "languages": ["jav"]},
            "method": {
                "kind": "flare_mt" if kind.startswith("flare_mt") else kind.removesuffix("_cached"),
                "lora": {"r": 8, "alpha": 16, "target_modules": list(target_modules)},
                "flare": {
                    "fusion": "add_relu",
                    "fusion_layers": "all",
                    **({"mt_encoder": mt} if kind.startswith("flare_mt") else {}),
                },
            },
            "training": {
                "batch_size": batch_size,
                "max_length": max_length,
                "seed": 0,
                "precision": precision,
                "compile": compile,
                "source_cache_gb": 4.0 if kind.endswith("_cached") else 0.0,
            },
        },
        source=f"benchmark {kind}",
    )


def time_steps(config: ExperimentConfig, warmup: int, steps: int) -> dict[str, Any]:
    """The median seconds of ``steps`` training steps after ``warmup``, the real and the computed (padded)
    tokens of a batch, and on a GPU (where the model runs when there is one) the peak memory."""
    from flare_ray.training.engine import autocast
    from flare_ray.training.setup import build_trial, train_loader
    from flare_ray.training.source_cache import attach_source_cache

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    trial = build_trial(config, "jav", roles=("train",))
    loader = train_loader(trial.splits["train"], trial.encoder, config.training, 0, 1)
    batches = [{k: v.to(device) for k, v in batch.items()} for batch, _ in zip(loader, range(max(warmup, 1)))]
    cache = attach_source_cache(trial.model, config)
    model = trial.model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times, looked = [], (0, 0)
    for i in range(warmup + steps):
        if i == warmup:
            looked = (cache.hits, cache.misses) if cache is not None else looked
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
        batch = batches[i % len(batches)]
        sync()
        started = time.perf_counter()
        with autocast(config.training.precision, device):
            loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - started)
    first = batches[0]
    result = {
        "seconds": statistics.median(times),
        # the weights every token goes through as a matrix product (the base's, LoRA's, the heads')
        "matmul_params": sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear)),
        "tokens": int(first["attention_mask"].sum()),  # the target side's real tokens
        "positions": int(first["input_ids"].numel()),
        "source_positions": int(
            next((v.numel() for k, v in first.items() if k.endswith("input_ids") and k != "input_ids"), 0)
        ),
        "hit_rate": cache.stats(since=looked)["source_cache_hit_rate"] if cache is not None else None,
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None,
    }
    return result


def run(
    root: Path,
    small: bool = False,
    warmup: int = 2,
    steps: int = 5,
    batch_size: int = 16,
    max_length: int = 128,
    methods: list[str] = METHODS,
) -> dict[str, dict[str, Any]]:
    base, mt = build_models(root, small)
    torch.manual_seed(0)
    results = {}
    for kind in methods:
        results[kind] = time_steps(experiment(base, mt, kind, batch_size, max_length), warmup, steps)
        print(f"  {kind:<16} {results[kind]['seconds']:.3f} s/step", flush=True)
    return results

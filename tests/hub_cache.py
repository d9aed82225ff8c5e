"""A local Hugging Face cache holding only the ``config.json`` of the hub models that the shipped YAMLs name:
what the pre-flight checks (:mod:`flare_ray.experiment.checks`) read, offline, without any weights.

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(fake_hub_cache(tmp_path)))
"""

from __future__ import annotations

import json
from pathlib import Path

# The real models' numbers of blocks and positions (their hub config.json files), for the layer and length checks.
SHIPPED_MODELS = {
    "FacebookAI/xlm-roberta-large": {
        "model_type": "xlm-roberta",
        "num_hidden_layers": 24,
        "max_position_embeddings": 514,
        "pad_token_id": 1,
    },
    "google/mt5-xl": {"model_type": "mt5", "num_layers": 24, "num_decoder_layers": 24, "is_encoder_decoder": True},
    "meta-llama/Llama-3.1-8B": {
        "model_type": "llama",
        "num_hidden_layers": 32,
        "max_position_embeddings": 131072,
        "architectures": ["LlamaForCausalLM"],
    },
    "google/gemma-2-9b": {
        "model_type": "gemma2",
        "num_hidden_layers": 42,
        "max_position_embeddings": 8192,
        "architectures": ["Gemma2ForCausalLM"],
    },
    "facebook/nllb-200-distilled-600M": {
        "model_type": "m2m_100",
        "encoder_layers": 12,
        "decoder_layers": 12,
        "is_encoder_decoder": True,
    },
    "facebook/nllb-200-3.3B": {
        "model_type": "m2m_100",
        "encoder_layers": 24,
        "decoder_layers": 24,
        "is_encoder_decoder": True,
    },  # the translation stage's
}
COMMIT = "0" * 40


def fake_hub_cache(root: Path, models: dict[str, dict] | None = None) -> Path:
    """Write ``models`` (repo id -> config.json content; default: :data:`SHIPPED_MODELS`) in the layout of
    ``huggingface_hub``'s cache under ``root``; returns the cache folder."""
    cache = Path(root) / "hf-hub-cache"
    for repo, config in (SHIPPED_MODELS if models is None else models).items():
        folder = cache / f"models--{repo.replace('/', '--')}"
        (folder / "refs").mkdir(parents=True, exist_ok=True)
        (folder / "refs" / "main").write_text(COMMIT)
        snapshot = folder / "snapshots" / COMMIT
        snapshot.mkdir(parents=True, exist_ok=True)
        (snapshot / "config.json").write_text(json.dumps(config))
    return cache

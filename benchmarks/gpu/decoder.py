"""A decoder of a real small model's shape for GPU checks on a machine that cannot reach the hub.

Llama 3.2 1B's architecture (16 blocks, hidden 2048, 32 heads with 8 key-value heads, MLP 8192, vocabulary
128256, tied embeddings: 1.24 B parameters) with random weights in bf16, and the tiny models' tokenizer
(its ids are a subset of the vocabulary). Throughput and memory depend on the shapes, not on the weights'
values, so this measures what QLoRA on Llama 3.2 1B costs; it learns nothing useful (random weights).

    python benchmarks/gpu/decoder.py OUT_DIR [--layers N]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from flare_ray.models.tiny import BOS, EOS, PAD, train_tokenizer


def build(out_dir: Path, layers: int = 16) -> Path:
    config = LlamaConfig(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=layers,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
        vocab_size=128256,
        max_position_embeddings=8192,
        rope_theta=500000.0,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    train_tokenizer("llama").save_pretrained(out_dir)
    print(
        f"{out_dir}: Llama ({layers} blocks, hidden 2048), {sum(p.numel() for p in model.parameters()) / 1e9:.2f} B parameters"
    )
    return out_dir


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--layers", type=int, default=16)
    args = parser.parse_args()
    build(args.out_dir, args.layers)

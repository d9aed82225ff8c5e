"""Tiny offline models: the real architectures, a few hundred thousand parameters.

Tests and the offline quickstart cannot download from the Hugging Face hub, so
they use models built from configs (random weights, fixed seed) with a
byte-level BPE tokenizer trained on ``corpus/corpus.txt``. Each is saved like a
hub checkpoint (``config.json``, safetensors, tokenizer files) and loaded back
through the ordinary ``from_pretrained`` code path. The M2M100 model's tokenizer
is an ``NllbTokenizer`` with NLLB-200's language-code tokens, so translation code
(``tokenizer.src_lang``, ``forced_bos_token_id``) runs as it does with NLLB.

    python -m flare_ray.models.tiny OUT_DIR   # builds every tiny model under OUT_DIR
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

CORPUS = Path(__file__).parent / "corpus" / "corpus.txt"
VERSION = "v2"  # v2: the m2m_100 tokenizer is an NllbTokenizer with language codes
VOCAB_SIZE = 2048
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<mask>"]  # ids 0..4 in every tiny model
PAD, BOS, EOS = 0, 1, 2

# How each architecture frames a sequence with special tokens, and where it pads.
_FRAMING = {
    "xlm-roberta": ("<s> $A </s>", "<s> $A </s> </s> $B </s>", "right"),
    "bert": ("<s> $A </s>", "<s> $A </s> $B </s>", "right"),
    "mt5": ("$A </s>", "$A </s> $B </s>", "right"),
    "m2m_100": ("$A </s>", "$A </s> $B </s>", "right"),
    "llama": ("<s> $A", "<s> $A $B", "left"),
    "gemma2": ("<s> $A", "<s> $A $B", "left"),
}
ARCHITECTURES = tuple(_FRAMING)
#: The base models' architecture families (m2m_100 is FLARE-MT's MT model, not a base model).
FAMILIES = {
    "xlm-roberta": "encoder",
    "bert": "encoder",
    "mt5": "encoder_decoder",
    "llama": "decoder",
    "gemma2": "decoder",
}
#: The blocks of each tiny model's fused stack (the encoder's for mt5 and m2m_100): what a config's
#: ``fusion_layers`` are checked against without building the model (torch and transformers stay unloaded).
LAYERS = {"xlm-roberta": 4, "bert": 4, "mt5": 4, "llama": 4, "gemma2": 4, "m2m_100": 2}


#: The tokens each tiny model reads in one input (:func:`flare_ray.models.positions.max_input_positions` of its
#: config; None: relative positions), for the same checks.
POSITIONS = {"xlm-roberta": 513, "bert": 512, "mt5": None, "llama": 1024, "gemma2": 1024, "m2m_100": 1024}


def _config(arch: str):
    from transformers import (
        BertConfig,
        Gemma2Config,
        LlamaConfig,
        M2M100Config,
        MT5Config,
        XLMRobertaConfig,
    )

    ids = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, vocab_size=VOCAB_SIZE)
    if arch == "xlm-roberta":
        return XLMRobertaConfig(
            hidden_size=64,
            num_hidden_layers=LAYERS[arch],
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=514,
            type_vocab_size=1,
            **ids,
        )
    if arch == "bert":  # saved as a sentence encoder (multilingual-e5's shape): no pooler, no task head
        return BertConfig(
            hidden_size=64,
            num_hidden_layers=LAYERS[arch],
            num_attention_heads=4,
            intermediate_size=128,
            max_position_embeddings=512,
            type_vocab_size=2,
            initializer_range=0.1,
            **ids,
        )
    if arch == "mt5":
        return MT5Config(
            d_model=64,
            d_kv=16,
            d_ff=128,
            num_layers=LAYERS[arch],
            num_decoder_layers=2,
            num_heads=4,
            relative_attention_num_buckets=16,
            decoder_start_token_id=PAD,
            tie_word_embeddings=False,
            dropout_rate=0.1,
            **ids,
        )
    # Decoders: a wider init than transformers' 0.02, else a frozen random model's logits are
    # nearly uniform and no adapter can move them (the final norm caps the hidden size).
    if arch == "llama":
        return LlamaConfig(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=LAYERS[arch],
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
            initializer_range=0.1,
            **ids,
        )
    if arch == "gemma2":
        return Gemma2Config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=LAYERS[arch],
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=1024,
            sliding_window=64,
            query_pre_attn_scalar=16,
            initializer_range=0.1,
            **ids,
        )
    if arch == "m2m_100":
        return M2M100Config(
            d_model=64,
            encoder_layers=LAYERS[arch],
            decoder_layers=2,
            encoder_attention_heads=4,
            decoder_attention_heads=4,
            encoder_ffn_dim=128,
            decoder_ffn_dim=128,
            max_position_embeddings=1024,
            decoder_start_token_id=EOS,
            **ids,
        )
    raise ValueError(f"no tiny model for architecture {arch!r}; expected one of {ARCHITECTURES}")


def _model_class(arch: str):
    from transformers import (
        AutoModel,
        AutoModelForCausalLM,
        AutoModelForMaskedLM,
        AutoModelForSeq2SeqLM,
    )

    return {
        "xlm-roberta": AutoModelForMaskedLM,
        "bert": AutoModel,  # the bare encoder, as sentence-embedding checkpoints ship
        "mt5": AutoModelForSeq2SeqLM,
        "m2m_100": AutoModelForSeq2SeqLM,
        "llama": AutoModelForCausalLM,
        "gemma2": AutoModelForCausalLM,
    }[arch]


def train_tokenizer(arch: str, extra_special_tokens: list[str] | None = None):
    """A byte-level BPE tokenizer trained on the shipped corpus, framed like ``arch``'s (m2m_100: :func:`nllb_tokenizer`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    if arch == "m2m_100":
        return nllb_tokenizer()
    single, pair, side = _FRAMING[arch]
    specials = SPECIAL_TOKENS + list(extra_special_tokens or [])
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(extra_special_tokens or []),
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(CORPUS)], trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[(t, tok.token_to_id(t)) for t in ("<s>", "</s>")]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        mask_token="<mask>",
        padding_side=side,
    )


def nllb_tokenizer():
    """NLLB-200's tokenizer class on a BPE trained on the shipped corpus.

    As in NLLB: Metaspace pre-tokenization (NLLB's SentencePiece BPE), the 202
    language codes (``eng_Latn``, ``jav_Latn``, ...) as special tokens after the
    trained vocabulary, and the ``<lang> text </s>`` framing set by ``src_lang``.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import NllbTokenizer
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(FAIRSEQ_LANGUAGE_CODES), special_tokens=SPECIAL_TOKENS, show_progress=False
    )
    tok.train([str(CORPUS)], trainer)
    bpe = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]]
    return NllbTokenizer(vocab=bpe["vocab"], merges=merges, additional_special_tokens=list(FAIRSEQ_LANGUAGE_CODES))


def build_tiny_model(arch: str, out_dir: str | Path, seed: int = 0) -> Path:
    """Build the tiny ``arch`` model with its tokenizer and save both to ``out_dir``. The global random state
    is left as it was: a trial that builds the model on first use draws the same LoRA initialisation and
    dropout as one that finds it built."""
    import torch

    out_dir = Path(out_dir)
    config = _config(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _model_class(arch).from_config(config, **({"add_pooling_layer": False} if arch == "bert" else {}))
    tokenizer = train_tokenizer(arch)
    assert len(tokenizer) <= config.vocab_size, (len(tokenizer), config.vocab_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def default_cache_dir() -> Path:
    root = os.environ.get("FLARE_RAY_CACHE") or Path.home() / ".cache" / "flare_ray"
    return Path(root) / f"tiny-{VERSION}"


def tiny_model_path(arch: str, cache_dir: str | Path | None = None) -> Path:
    """Path of the tiny ``arch`` checkpoint, built on first use (a second or so)."""
    path = Path(cache_dir or default_cache_dir()) / arch
    if not (path / "config.json").is_file():
        tmp = path.with_name(f"{arch}.tmp-{os.getpid()}")
        build_tiny_model(arch, tmp)
        try:
            os.replace(tmp, path)
        except OSError:  # built concurrently by another process: keep theirs
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m flare_ray.models.tiny", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="folder to write one sub-folder per architecture into")
    parser.add_argument("--arch", choices=ARCHITECTURES, action="append", help="only these (repeatable)")
    args = parser.parse_args(argv)
    for arch in args.arch or ARCHITECTURES:
        path = build_tiny_model(arch, args.out_dir / arch)
        print(f"{arch}: {path}")


if __name__ == "__main__":
    main()

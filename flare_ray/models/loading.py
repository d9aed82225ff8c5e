"""Loading the base model and tokenizer of a trial: hub ids, local paths, offline tiny models, QLoRA.

``name_or_path`` is a Hugging Face hub id (``FacebookAI/xlm-roberta-large``), a
local folder, or ``tiny:<arch>`` for the offline tiny models. The head follows
the family and the task: a classification or span head for encoders, the LM
head for encoder-decoders and decoders (generative, as in the paper).
"""

from __future__ import annotations

import torch

from flare_ray.fusion import ArchitectureFamily

TINY_PREFIX = "tiny:"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_name_or_path(name_or_path: str) -> str:
    """``tiny:<arch>`` becomes the folder of that tiny model (built on first use); anything else is kept."""
    if name_or_path.startswith(TINY_PREFIX):
        from .tiny import tiny_model_path

        return str(tiny_model_path(name_or_path[len(TINY_PREFIX) :]))
    return name_or_path


def infer_family(name_or_path: str) -> ArchitectureFamily:
    """The architecture family from the model's config alone (no weights are loaded)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(resolve_name_or_path(name_or_path))
    if getattr(config, "is_encoder_decoder", False):
        return ArchitectureFamily.ENCODER_DECODER
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in architectures) or config.model_type in {"llama", "gemma", "gemma2", "gemma3", "mistral", "qwen2"}:
        return ArchitectureFamily.DECODER
    return ArchitectureFamily.ENCODER


def load_model(
    name_or_path: str,
    family: ArchitectureFamily | str,
    *,
    labels: tuple[str, ...] | None,
    quantization: str = "none",
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    device_map: str | dict | None = None,
):
    """The base model with the right head, and its tokenizer.

    ``labels``: the task's label set (a classification head for encoders), or
    ``None`` for extractive QA (a span head for encoders). Generative families
    ignore it. ``quantization="4bit"`` loads NF4 weights with bitsandbytes and
    prepares the model for k-bit training (QLoRA).
    """
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForQuestionAnswering,
        AutoModelForSeq2SeqLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
        BitsAndBytesConfig,
    )

    family = ArchitectureFamily(family)
    path = resolve_name_or_path(name_or_path)
    kwargs: dict = {"dtype": DTYPES[dtype]}
    if family is ArchitectureFamily.ENCODER_DECODER:
        auto = AutoModelForSeq2SeqLM
    elif family is ArchitectureFamily.DECODER:
        auto = AutoModelForCausalLM
    elif labels is None:
        auto = AutoModelForQuestionAnswering
    else:
        auto = AutoModelForSequenceClassification
        kwargs.update(
            num_labels=len(labels),
            id2label=dict(enumerate(labels)),
            label2id={label: i for i, label in enumerate(labels)},
        )
    if quantization == "4bit":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=DTYPES[dtype] if dtype != "float32" else torch.float32,
        )
        kwargs["device_map"] = device_map or ("cuda" if torch.cuda.is_available() else "cpu")
    elif quantization != "none":
        raise ValueError(f"model.quantization: {quantization!r}; expected 'none' or '4bit'")
    elif device_map is not None:
        kwargs["device_map"] = device_map
    model = auto.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:  # Llama ships without one
        tokenizer.pad_token = tokenizer.eos_token
    if family is ArchitectureFamily.DECODER:
        tokenizer.padding_side = "left"  # prompts for generation; training batches pad right themselves
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if quantization == "4bit":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    return model, tokenizer


"""Loading the base model and tokenizer of a trial: hub ids, local paths, offline tiny models, QLoRA.

``name_or_path`` is a Hugging Face hub id (``FacebookAI/xlm-roberta-large``), a
local folder, or ``tiny:<arch>`` for the offline tiny models.

The head (:func:`resolve_head`, the experiment's ``model.head``) is ``"task"``
(a classification head, or a span head for extractive QA) or ``"generative"``
(the LM head writes the answer string). By default encoders and
encoder-decoders get task heads, as in the authors' code (XLM-R and mT5 with a
classification or QA span head), and decoders generate, as in the paper.
:func:`load_mt_tokenizer` loads the MT model's tokenizer of FLARE-MT, set to
read the target language.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

import torch

from flare_ray.fusion import ArchitectureFamily

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny:"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
HEADS = ("task", "generative")
Head = Literal["task", "generative"]


def resolve_head(family: ArchitectureFamily | str, head: str | None) -> Head:
    """The head of a model of ``family``: ``head`` checked, or the family's default for ``None``.

    Defaults: ``"task"`` for encoders and encoder-decoders, ``"generative"`` for decoders.
    ValueError for a head the family cannot have (an encoder has no LM head) or that this
    project does not train (task heads on decoders).
    """
    family = ArchitectureFamily(family)
    if head is None:
        return "generative" if family is ArchitectureFamily.DECODER else "task"
    if head not in HEADS:
        raise ValueError(f"model.head: {head!r}; expected 'task', 'generative' or null (the family's default)")
    if family is ArchitectureFamily.ENCODER and head == "generative":
        raise ValueError(
            "model.head 'generative' needs an LM head that writes the answer, and an encoder (XLM-R) has none; "
            "use model.head 'task' (a classification or span head) or null"
        )
    if family is ArchitectureFamily.DECODER and head == "task":
        raise ValueError(
            "model.head 'task' is not supported for decoders (Llama, Gemma): they generate their answers, as in "
            "the paper; use model.head 'generative' or null (task heads are for encoders and encoder-decoders)"
        )
    return head  # type: ignore[return-value]


def load_mt_tokenizer(name_or_path: str, language: str):
    """The tokenizer of FLARE-MT's MT model (NLLB-200, or ``tiny:m2m_100``), reading ``language``.

    ``src_lang`` is the target language's NLLB-200 code (:func:`flare_ray.languages.nllb_language`),
    so every MT input starts with that code token (``jav_Latn``, ``swh_Latn``, ...) and not with
    the tokenizer's default ``eng_Latn``. Languages NLLB-200 lacks (mad, nij, bbc) get their
    fallback code (``ind_Latn``), logged as a warning. ValueError for a language without a code,
    or a tokenizer that does not know the code (not an NLLB-200 tokenizer).
    """
    from transformers import AutoTokenizer

    from flare_ray.languages import nllb_language

    nllb = nllb_language(language)
    if nllb.fallback:
        log.warning("FLARE-MT: the MT encoder reads %s as %s: %s", language, nllb.code, nllb.fallback)
    tokenizer = AutoTokenizer.from_pretrained(resolve_name_or_path(name_or_path), src_lang=nllb.code)
    code_id = tokenizer.convert_tokens_to_ids(nllb.code)
    if code_id is None or code_id == tokenizer.unk_token_id or getattr(tokenizer, "src_lang", None) != nllb.code:
        raise ValueError(
            f"{name_or_path}: its tokenizer ({type(tokenizer).__name__}) cannot tag text as {nllb.code} "
            f"(language {language!r}); FLARE-MT needs an NLLB-200 tokenizer"
        )
    return tokenizer


def resolve_name_or_path(name_or_path: str) -> str:
    """``tiny:<arch>`` becomes the folder of that tiny model (built on first use); anything else is kept."""
    if name_or_path.startswith(TINY_PREFIX):
        from .tiny import tiny_model_path

        return str(tiny_model_path(name_or_path[len(TINY_PREFIX) :]))
    return name_or_path


def infer_family(name_or_path: str, family: str | None = None) -> ArchitectureFamily:
    """``family`` if given, else the family of a tiny model, else read from the model's config alone
    (no weights are loaded)."""
    from transformers import AutoConfig

    from .tiny import FAMILIES

    tiny = FAMILIES.get(name_or_path.removeprefix(TINY_PREFIX)) if name_or_path.startswith(TINY_PREFIX) else None
    if family or tiny:
        return ArchitectureFamily(family or tiny)
    config = AutoConfig.from_pretrained(resolve_name_or_path(name_or_path))
    if getattr(config, "is_encoder_decoder", False):
        return ArchitectureFamily.ENCODER_DECODER
    architectures = getattr(config, "architectures", None) or []
    if any(a.endswith("ForCausalLM") for a in architectures) or config.model_type in {
        "llama",
        "gemma",
        "gemma2",
        "gemma3",
        "mistral",
        "qwen2",
    }:
        return ArchitectureFamily.DECODER
    return ArchitectureFamily.ENCODER


def initialised_modules(model: torch.nn.Module, missing_keys) -> tuple[str, ...]:
    """The modules of ``model`` that transformers initialised at random because the checkpoint lacks their
    weights (``missing_keys`` of its loading info), each named at its outermost such module: a BERT-style
    sentence encoder read as ``BertForSequenceClassification`` gives ``("bert.pooler", "classifier")``.

    A module counts when all its parameters are missing; one of whose parameters some were loaded is named
    by the module that holds the missing ones.
    """
    missing = set(missing_keys)

    def all_missing(name: str) -> bool:
        prefix = f"{name}." if name else ""
        return all(prefix + key in missing for key, _ in model.get_submodule(name).named_parameters())

    names = set()
    for key in missing:
        name = key.rpartition(".")[0]
        while name and all_missing(parent := name.rpartition(".")[0]):
            name = parent
        names.add(name or key)  # a parameter of the model itself: named by itself
    return tuple(sorted(names))


def newly_initialised(model: torch.nn.Module) -> tuple[str, ...]:
    """What :func:`load_model` found missing from the checkpoint (:func:`initialised_modules`); () for a model
    loaded otherwise. Kept on the model object, so a stage-1 merge (peft's ``merge_and_unload`` returns the
    same object) keeps it too."""
    return getattr(model, "newly_initialised_modules", ())


def attn_implementation(model: torch.nn.Module) -> str:
    """The attention kernels ``model`` runs (transformers' ``config._attn_implementation``: ``"eager"``,
    ``"sdpa"``, ``"flash_attention_2"``, ...), found on the first module with a transformers config, so a
    peft or FLARE wrapper answers for its base model; ``"unknown"`` for a model without one."""
    for module in model.modules():
        found = getattr(getattr(module, "config", None), "_attn_implementation", None)
        if isinstance(found, str):
            return found
    return "unknown"


def load_model(
    name_or_path: str,
    family: ArchitectureFamily | str,
    *,
    labels: tuple[str, ...] | None,
    head: str | None = None,
    quantization: str = "none",
    dtype: str = "float32",
    gradient_checkpointing: bool = False,
    device_map: str | dict | None = None,
    attn_implementation: str | None = None,
):
    """The base model with the right head, and its tokenizer.

    ``head``: ``"task"``, ``"generative"`` or ``None`` (the family's default), see
    :func:`resolve_head`. With a task head, ``labels`` is the task's label set (a
    classification head: ``AutoModelForSequenceClassification``, e.g.
    ``MT5ForSequenceClassification``) or ``None`` for extractive QA (a span head:
    ``AutoModelForQuestionAnswering``); generative heads ignore it (the LM head of
    ``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM``). ``quantization="4bit"``
    loads NF4 weights with bitsandbytes and prepares the model for k-bit training (QLoRA).
    ``attn_implementation``: transformers' attention kernels (``"eager"``, ``"sdpa"``,
    ``"flash_attention_2"``; ``None``: transformers' choice); :func:`attn_implementation` reads which one
    the loaded model runs.
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
    head = resolve_head(family, head)
    path = resolve_name_or_path(name_or_path)
    kwargs: dict = {"dtype": DTYPES[dtype]}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:  # where `kernels` is installed, Llama on CUDA would fetch a hub kernel, and fail
        os.environ.setdefault("USE_HUB_KERNELS", "NO")
    if head == "generative":
        auto = AutoModelForSeq2SeqLM if family is ArchitectureFamily.ENCODER_DECODER else AutoModelForCausalLM
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
    model, info = auto.from_pretrained(path, output_loading_info=True, **kwargs)
    model.newly_initialised_modules = initialised_modules(model, info["missing_keys"])
    if model.newly_initialised_modules:
        log.info(
            "%s: not in the checkpoint, initialised at random (trained as the task head): %s",
            name_or_path,
            ", ".join(model.newly_initialised_modules),
        )
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

"""The methods of the paper, one ``method.kind`` each, and the adapted model each one trains.

Every method runs through the same trial recipe (:mod:`flare_ray.training.loop`), with the same
LoRA settings (``method.lora``), data, stage-1 model and selection, so a comparison is fair:

============== ======== ======================================================================
kind           trains   what the model is and reads
============== ======== ======================================================================
zero_shot      no       the stage-1 model (English fine-tune) scored on the gold target test
translate_test no       the stage-1 model scored on the English side of the test set
lora           yes      translate-train LoRA on the target side (peft's own)
input_fusion   yes      LoRA on ``[x_S; x_T]``: the source, a separator and the target in one input
xmixup         yes      LoRA with X-Mixup's cross-attention mixing (:mod:`flare_ray.baselines.xmixup`)
flare          yes      FLARE: the source pass's representations fused in the LoRA bottlenecks
flare_mt       yes      FLARE-MT: an MT encoder's latent translation of the target fused instead
============== ======== ======================================================================
"""

from __future__ import annotations

import dataclasses

from peft import LoraConfig, TaskType, get_peft_model

from flare_ray.baselines import XMixupModel
from flare_ray.experiment.training import METHODS, Method, MethodKind  # what each method is (no torch)
from flare_ray.fusion import ArchitectureFamily, default_task_type, get_flare_model, untrained_task_heads
from flare_ray.models.loading import newly_initialised, resolve_name_or_path

__all__ = ["METHODS", "Method", "MethodKind", "authors_modules", "build_adapter"]


def authors_modules(model) -> list[str]:
    """What the authors train whole beside the LoRA (pnborchert/FLARE, ``run.py``): a decoder's LM head, which
    writes the answer, and for Llama also the input embeddings; nothing else for encoders and encoder-decoders
    (their task heads train anyway). Where the LM head is tied to the embeddings (Gemma 2), it is one matrix:
    training the head trains the embeddings."""
    if ArchitectureFamily.of(model) is not ArchitectureFamily.DECODER or default_task_type(model) != TaskType.CAUSAL_LM:
        return []
    return ["lm_head"] + (["embed_tokens"] if model.config.model_type == "llama" else [])


def build_adapter(model, method):
    """Wrap ``model`` (a transformers model, stage 1 merged in) as ``method`` (a MethodSpec) trains it.

    The LoRA is peft's own, with the task head trained beside it (peft's ``modules_to_save``), as in
    the paper: "only the task head and LoRA parameters are trainable" (Sec. 3.3). Methods that do not
    train get the model itself, frozen.

    The task head is every module the checkpoint lacked (:func:`~flare_ray.models.loading.newly_initialised`:
    transformers drew it at random when the model loaded), plus the heads peft's task type names
    (``classifier``, ``score``, ``qa_outputs``) or misses (mT5's ``classification_head``). So a BERT-style
    sentence encoder's missing pooler (a dense layer and tanh over the first token) trains with the
    classifier on it: together they are what XLM-R's ``classifier`` is (dense, tanh, projection), which
    peft trains whole. A module the checkpoint holds (a pretrained pooler) stays frozen. Trained, such a
    module is saved with the adapter, so stage 1, every trial, the methods that only score, ``predict`` and
    a restarted trial all read the same weights, whatever the random state when the base model loaded.
    """
    if not METHODS[method.kind].trains:
        return model.requires_grad_(False).eval()
    whole = authors_modules(model) if method.lora.modules_to_save is None else method.lora.modules_to_save
    heads = list(dict.fromkeys([*untrained_task_heads(model), *newly_initialised(model), *whole]))
    tied = bool(getattr(model.config, "tie_word_embeddings", False)) and bool({"lm_head", "embed_tokens"} & set(heads))
    lora = LoraConfig(
        **method.lora.peft_kwargs(),
        task_type=default_task_type(model),
        modules_to_save=heads or None,
        ensure_weight_tying=tied,
    )  # a tied LM head and embeddings stay one matrix, trained once
    if method.kind in ("lora", "input_fusion"):
        return get_peft_model(model, lora)
    if method.kind == "xmixup":
        return XMixupModel(get_peft_model(model, lora), method.xmixup)
    config = method.flare_config()
    if config.mt_encoder is not None:  # FLARE-MT: a hub id, a folder, or the offline tiny:m2m_100
        config = dataclasses.replace(config, mt_encoder=resolve_name_or_path(config.mt_encoder))
    return get_flare_model(model, config, lora)

"""The adapted model of a trial: FLARE, FLARE-MT, or peft's plain LoRA (the baseline)."""

from __future__ import annotations

import dataclasses

from peft import LoraConfig, get_peft_model

from flare_ray.fusion import default_task_type, get_flare_model, untrained_task_heads
from flare_ray.models.loading import resolve_name_or_path

# what each method feeds the model besides the target batch
NEEDS_SOURCE = {"flare": True, "flare_mt": False, "lora": False}


def build_adapter(model, method):
    """Wrap ``model`` (a transformers model) as the trial's ``method`` (a MethodSpec) asks.

    The LoRA is peft's own, with the task head trained beside it (peft's ``modules_to_save``;
    named explicitly where peft's task-type default misses it, e.g. mT5's ``classification_head``),
    as in the paper: "only the task head and LoRA parameters are trainable" (Sec. 3.3).
    """
    lora = LoraConfig(
        **method.lora.peft_kwargs(), task_type=default_task_type(model), modules_to_save=untrained_task_heads(model) or None
    )
    if method.kind == "lora":
        return get_peft_model(model, lora)
    config = method.flare_config()
    if config.mt_encoder is not None:  # FLARE-MT: a hub id, a folder, or the offline tiny:m2m_100
        config = dataclasses.replace(config, mt_encoder=resolve_name_or_path(config.mt_encoder))
    return get_flare_model(model, config, lora)

"""The adapted model of a trial: FLARE, FLARE-MT, or peft's plain LoRA (the baseline)."""

from __future__ import annotations

from peft import LoraConfig, get_peft_model

from flare_ray.fusion import default_task_type, get_flare_model

# what each method feeds the model besides the target batch
NEEDS_SOURCE = {"flare": True, "flare_mt": False, "lora": False}


def build_adapter(model, method):
    """Wrap ``model`` (a transformers model) as the trial's ``method`` (a MethodSpec) asks."""
    lora = LoraConfig(**method.lora.peft_kwargs(), task_type=default_task_type(model))
    if method.kind == "lora":
        return get_peft_model(model, lora)
    return get_flare_model(model, method.flare_config(), lora)

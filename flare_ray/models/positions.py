"""How many tokens a model reads in one input, from its config alone (no weights, no torch).

Absolute position embeddings bound the input: BERT's ``max_position_embeddings``; RoBERTa and XLM-R
number positions from ``pad_token_id + 1``, so they read two fewer (XLM-R: 514 - 2 = 512). Decoders
read their trained context (``max_position_embeddings``). T5 and mT5 have relative positions: nothing
bounds their input (None).
"""

from __future__ import annotations

from typing import Any

_PADDING_OFFSET = ("roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "xmod")  # positions from pad + 1
_RELATIVE = ("t5", "mt5", "umt5", "byt5")


def max_input_positions(config: Any) -> int | None:
    """The longest input of a model of ``config`` (a transformers config, or its ``config.json`` as a dict);
    None where its positions are relative or its config does not say."""
    get = config.get if isinstance(config, dict) else lambda key, default=None: getattr(config, key, default)
    model_type = get("model_type")
    if model_type in _RELATIVE:
        return None
    positions = get("max_position_embeddings")
    if not isinstance(positions, int) or isinstance(positions, bool) or positions <= 0:
        text = get("text_config")  # multimodal configs keep the language model's apart
        return max_input_positions(text) if isinstance(text, dict) or hasattr(text, "max_position_embeddings") else None
    if model_type in _PADDING_OFFSET:
        positions -= (get("pad_token_id") or 0) + 1
    return positions

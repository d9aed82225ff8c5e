"""A nested training state (the optimizer's, the schedule's, the best adapter so far) as files that load
without pickle: its tensors in ``tensors.safetensors``, everything else in ``state.json``.

``torch.load`` of a checkpoint unpickles it, and a checkpoint folder may come from shared storage that
others write to; so a restart reads only these two formats. The JSON keeps what the optimizer's state
needs back exactly: dicts with integer keys (parameter indices), tuples, ``None``, infinities.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load, save_file

TENSORS = "tensors.safetensors"
STATE = "state.json"


def save_state(state: Any, folder: Path) -> None:
    """Write ``state`` (dicts, lists, tuples, tensors, numbers, strings, None) into ``folder``."""
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            if path in tensors:
                raise ValueError(f"training state: two tensors at {path!r}")
            tensors[path] = value.detach().cpu().contiguous()
            return {"__tensor__": path}
        if isinstance(value, dict):
            if all(isinstance(k, str) for k in value):
                return {"__dict__": {k: encode(v, f"{path}.{k}") for k, v in value.items()}}
            return {"__items__": [[k, encode(v, f"{path}.{k}")] for k, v in value.items()]}
        if isinstance(value, (list, tuple)):
            items = [encode(v, f"{path}.{i}") for i, v in enumerate(value)]
            return {"__tuple__": items} if isinstance(value, tuple) else items
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise TypeError(f"training state at {path!r}: cannot save a {type(value).__name__} without pickle")

    document = encode(state, "state")
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / TENSORS))
    (folder / STATE).write_text(json.dumps(document))


def load_state(folder: Path) -> Any:
    """What :func:`save_state` wrote, tensors on the CPU, in memory of their own: ``load_file``'s tensors map the
    file, and a checkpoint folder is written over in place (Tune reuses a restored trial's checkpoint numbers),
    which changed a restored optimizer's moments under it (a NaN loss an epoch after the restart)."""
    tensors = load((folder / TENSORS).read_bytes())

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(decode(v) for v in value["__tuple__"])
        if "__items__" in value:
            return {k: decode(v) for k, v in value["__items__"]}
        return {k: decode(v) for k, v in value["__dict__"].items()}

    return decode(json.loads((folder / STATE).read_text()))


def has_state(folder: Path) -> bool:
    return (folder / STATE).is_file() and (folder / TENSORS).is_file()

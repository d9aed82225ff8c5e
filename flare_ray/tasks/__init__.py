"""The paper's tasks behind one interface: XNLI, NusaX, TyDiQA-GoldP."""

from .base import DATA_DIR, ROLES, Role, SplitRecipe, Task, TaskConfig, TaskDataError
from .nusax import NusaX
from .tydiqa import TyDiQA
from .xnli import XNLI

TASKS: dict[str, type[Task]] = {cls.name: cls for cls in (XNLI, NusaX, TyDiQA)}


def get_task(config: TaskConfig | dict) -> Task:
    """The task named in ``config``, checked (language, recipes) without reading any data."""
    if isinstance(config, dict):
        config = TaskConfig.model_validate(config)
    return TASKS[config.name](config)


__all__ = [
    "DATA_DIR",
    "ROLES",
    "TASKS",
    "NusaX",
    "Role",
    "SplitRecipe",
    "Task",
    "TaskConfig",
    "TaskDataError",
    "TyDiQA",
    "XNLI",
    "get_task",
]

"""Imports point one way: each package of flare_ray imports only the packages below it in LAYERS (the
README's "Where things are" table), at run time. Type-only imports (``if TYPE_CHECKING:``) and the
``__main__`` entry points of ``python -m flare_ray.<command>`` are the exceptions."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "flare_ray"
LAYERS = ["cli", "report", "search", "experiment", "training", "tracking", "translate", "tasks", "models", "baselines", "fusion",
          "configfile", "logs", "storage", "secrets", "languages"]  # fmt: skip


def runtime_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    type_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                 for n in ast.walk(node)}  # fmt: skip
    return [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and id(node) not in type_only
            and node.module and node.module.startswith("flare_ray.")]  # fmt: skip


def test_every_package_imports_only_the_layers_below_it():
    assert {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()} - {
        "__init__", "data", "tune", "stage1", "predict"} <= set(LAYERS)  # every package has its place
    upward = []
    for path in PACKAGE.rglob("*.py"):
        layer = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if layer not in LAYERS or path.name == "__main__.py":
            continue
        for module in runtime_imports(path):
            other = module.split(".")[1]
            if other != layer and other in LAYERS and LAYERS.index(other) < LAYERS.index(layer):
                upward.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not upward, upward
    assert runtime_imports(PACKAGE / "training" / "loop.py")  # the check reads real imports

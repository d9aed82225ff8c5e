"""Imports point one way: each package of flare_ray imports only the packages below it in LAYERS (the table
of docs/architecture.md, "Where things are"), type-only imports (``if TYPE_CHECKING:``) included. The ``__main__``
entry points of ``python -m flare_ray.<command>`` (which call :mod:`flare_ray.cli`) are the exception.

The schema owns every section of the experiment YAML (:mod:`flare_ray.experiment`, with the ``training``
sections in :mod:`flare_ray.experiment.training`); the trial recipe (:mod:`flare_ray.training`) sits above it
and imports it. Beyond the order, a few imports that the order would allow are refused (FORBIDDEN)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from tests.helpers import REPO

PACKAGE = REPO / "flare_ray"
LAYERS = [
    "cli",
    "report",
    "search",
    "predict",
    "training",
    "experiment",
    "tracking",
    "translate",
    "tasks",
    "models",
    "baselines",
    "fusion",
    "selection",
    "significance",
    "configfile",
    "logs",
    "digests",
    "storage",
    "secrets",
    "local_ray",
    "languages",
]
# (importer, imported): the trial recipe never imports the translator or the model registry (that is
# `predict`'s job), and the report reads MLflow records without the sweep's machinery.
FORBIDDEN = [
    ("training", "flare_ray.translate"),
    ("training", "flare_ray.tracking.registry"),
    ("report", "flare_ray.search"),
]


def imports(path: Path) -> list[str]:
    """Every ``flare_ray.*`` module ``path`` imports, at run time or for types only, absolute or relative."""
    package = path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module or "") if p)
            found += [module] * bool(node.module) + [
                f"{module}.{alias.name}" for alias in node.names
            ]  # a name may be a module
    return [m for m in found if m.startswith("flare_ray.")]


def layer_of(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def modules() -> list[Path]:
    return [p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py" and layer_of(p) != "__init__"]


def test_every_package_has_its_place():
    packages = {p.name.removesuffix(".py") for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    entry_points = {"tune", "stage1"}  # folders with only a __main__.py (python -m flare_ray.tune, .stage1)
    assert packages - {"__init__", "__pycache__", "data"} - entry_points == set(LAYERS)  # data/: shipped files


def test_the_architecture_page_lists_the_layers_in_their_order():
    """docs/architecture.md ("Where things are") describes this layout: its rows name the packages in LAYERS'
    order."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    table = text[text.index("# Where things are") :].split("\n## ")[0]
    named = [
        re.findall(r"`(?:flare_ray/)?([a-z_0-9]+)(?:/|\.py)`", line.split("|")[1])
        for line in table.splitlines()
        if line.startswith("| `flare_ray/")
    ]
    assert [name for row in named for name in row] == LAYERS


def test_every_package_imports_only_the_layers_below_it_types_included():
    upward = []
    for path in modules():
        layer = layer_of(path)
        for module in imports(path):
            other = module.split(".")[1]
            if other != layer and LAYERS.index(other) < LAYERS.index(layer):
                upward.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not upward, upward


def test_the_refused_imports_are_absent():
    found = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in modules()
        for importer, refused in FORBIDDEN
        if layer_of(path) == importer
        for module in imports(path)
        if module == refused or module.startswith(refused + ".")
    ]
    assert not found, found


def test_the_check_reads_real_imports_of_every_kind():
    loop = imports(PACKAGE / "training" / "loop.py")
    assert "flare_ray.fusion" in loop and "flare_ray.training.engine" in loop  # absolute and relative
    assert "flare_ray.experiment" in imports(PACKAGE / "training" / "setup.py")
    assert any(m.startswith("flare_ray.tracking.registry") for m in imports(PACKAGE / "predict" / "adapters.py"))

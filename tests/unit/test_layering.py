"""Imports in `unet_jax` go only downward: runtime < model < data < weights < inference < training < export < cli.

Read from every module's source (its function-level imports too), so a lazy import that breaks
the layering is found as well as a top-level one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "unet_jax"
FLOORS = ("runtime", "model", "data", "weights", "inference", "training", "export")  # lowest first
TOP = ("cli", "__main__")  # the entry points: nothing below imports them


def _package(module: str) -> str:
    """unet_jax.training.loop -> training; unet_jax.config -> config; unet_jax -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> set[str]:
    """Every unet_jax module `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("unet_jax")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("unet_jax"):
            found.add(node.module)
            if node.module == "unet_jax":  # from unet_jax import cli
                found |= {f"unet_jax.{a.name}" for a in node.names}
    return found


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(("unet_jax", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")
        yield name, path


MODULES = dict(_modules())


def test_every_module_is_in_a_package_or_is_an_entry_point_or_a_re_export():
    top_level = {_package(name) for name in MODULES if name.count(".") == 1}
    assert top_level <= {*FLOORS, *TOP, "config", "_moved"}, "a new top-level module belongs in one of the packages"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if _package(n) in FLOORS))
def test_a_package_imports_only_packages_below_it(name):
    floor = FLOORS.index(_package(name))
    for imported in _imports(MODULES[name]):
        target = _package(imported)
        if target in FLOORS:
            assert FLOORS.index(target) <= floor, f"{name} imports {imported}, above it"
        else:
            assert target not in TOP, f"{name} imports the entry point {imported}"


def test_inference_never_imports_training():
    for name, path in MODULES.items():
        if _package(name) == "inference":
            assert not any(_package(i) == "training" for i in _imports(path)), name


def test_the_check_sees_an_upward_import(tmp_path):
    """The AST walk finds imports inside functions: the test above could not pass by missing them."""
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from unet_jax.training.loop import train\n")
    assert _package(next(iter(_imports(module)))) == "training"

"""The import rules of the house, read from the source of every module under src/esft (imports inside
functions too): the training methods live in rooms under `esft.methods` (es, grpo, adamw), the registry
`esft.methods` alone names them all, and the CLI sits above everything.

- no module outside the methods and the CLI imports a method or the registry: geometry, evaluate and
  plots import none, and nothing below the methods does;
- a method imports no other room, nor the registry, nor the CLI; nothing but the CLI imports the CLI;
- the registry names every room and imports none (it loads the chosen one by name), and no other module
  imports two rooms: loading one method never loads another (GRPO and AdamW never load the ES engine).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from conftest import REPO

SRC = REPO / "src"
REGISTRY = "esft.methods"
CLI = "esft.cli"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = SRC / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> set[str]:
    """The esft modules `path` imports anywhere in its source; `from package import module` names the module."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, one level up per further dot
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if _is_module(f"{base}.{a.name}"))
    return {m for m in found if m == "esft" or m.startswith("esft.")}


GRAPH = {_module_name(p): _imports(p) for p in sorted((SRC / "esft").rglob("*.py"))}
"""esft module -> the esft modules it imports."""

ROOMS = sorted(f"{REGISTRY}.{p.stem}" for p in (SRC / "esft" / "methods").iterdir()
               if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem != "__init__"))
"""The methods' rooms: every module and package directly under esft/methods."""


_REGISTRY = ast.parse((SRC / "esft" / "methods" / "__init__.py").read_text(encoding="utf-8"))
METHODS = next(ast.literal_eval(node.value) for node in _REGISTRY.body
               if isinstance(node, ast.AnnAssign) and node.target.id == "METHODS")
"""The registry's method name -> module, read from its source (nothing is imported here)."""


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _room(module: str) -> str | None:
    return next((room for room in ROOMS if _within(module, room)), None)


def _violations(modules, forbidden) -> list[str]:
    """`module -> import` for every import of `modules` that `forbidden(module, imported)` holds for."""
    return [f"{m} -> {i}" for m in sorted(modules) for i in sorted(GRAPH[m]) if forbidden(m, i)]


def test_the_rules_see_the_house():
    """Not vacuous: the rooms are there and imports are read, function-local ones included."""
    assert ROOMS == ["esft.methods.adamw", "esft.methods.es", "esft.methods.grpo"]
    assert {"esft.geometry.variants", "esft.evaluate.accuracy", "esft.plots.figures"} <= set(GRAPH)
    assert "esft.rollout.decoder" in GRAPH["esft.geometry.variants"]  # imported inside a function
    assert "esft.methods.es.trainer" in GRAPH["esft.cli.train"]  # inside a function too
    assert "esft.plots.figures" in GRAPH["esft.cli.report"]  # `from esft.plots import figures`


def test_no_module_outside_the_methods_and_the_cli_imports_a_method():
    """Geometry, evaluate and plots import no method, and neither does anything below the methods."""
    outside = [m for m in GRAPH if not _within(m, REGISTRY) and not _within(m, CLI)]
    assert {"esft.geometry.variants", "esft.evaluate.test_curve", "esft.plots.tables", "esft.runs"} <= set(outside)
    assert _violations(outside, lambda m, i: _within(i, REGISTRY)) == []


def test_a_method_imports_no_other_method_nor_the_registry_nor_the_cli():
    in_rooms = [m for m in GRAPH if _room(m)]
    assert _violations(in_rooms, lambda m, i: i == REGISTRY or _within(i, CLI)
                       or (_room(i) is not None and _room(i) != _room(m))) == []


def test_nothing_but_the_cli_imports_the_cli():
    assert _violations([m for m in GRAPH if not _within(m, CLI)], lambda m, i: _within(i, CLI)) == []


def test_only_the_registry_names_every_method_and_it_imports_none():
    assert sorted({_room(module) for module in METHODS.values()}) == ROOMS
    assert all(module in GRAPH for module in METHODS.values())
    assert [i for i in GRAPH[REGISTRY] if _room(i)] == []  # loaded by name, only when chosen
    several = {m: sorted({_room(i) for i in GRAPH[m]} - {None}) for m in GRAPH if m != REGISTRY}
    assert {m: rooms for m, rooms in several.items() if len(rooms) > 1} == {}


def _closure(module: str) -> set[str]:
    """Every esft module that importing `module` loads: its imports, theirs, and their packages."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        parts = current.split(".")
        todo.extend(".".join(parts[:k]) for k in range(1, len(parts)))  # packages run their __init__ first
        todo.extend(GRAPH.get(current, ()))
    return seen


@pytest.mark.parametrize("method", ["es", "grpo", "lbes", "adamw"])
def test_loading_a_method_loads_no_other_room(method):
    seen = _closure(METHODS[method])
    assert {"esft.runs", "esft.models", "esft.tasks"} <= seen
    assert sorted({_room(m) for m in seen} - {None}) == [_room(METHODS[method])]


LAYERS = [
    ("esft", "esft.errors", "esft.io", "esft.labels", "esft.params", "esft.noise", "esft.tokens", "esft.config"),
    ("esft.tasks",), ("esft.models",), ("esft.rollout",), ("esft.runs", "esft.memory"), (REGISTRY,),
    ("esft.evaluate",), ("esft.geometry",), ("esft.plots",), (CLI,),
]
"""The stages bottom-up over the shared base, as the README's "Code layout" draws them."""


def _layer(module: str) -> int:
    """The index of the deepest layer whose package holds `module` (`esft` itself holds only the package)."""
    return max(k for k, packages in enumerate(LAYERS) for p in packages
               if module == p or (p != "esft" and _within(module, p)))


def test_the_tree_reads_as_the_stages():
    """tasks → models → rollout → runs/memory → methods → evaluate → geometry → plots → cli: a module imports
    its own layer or lower ones, never a later stage (every module sits in exactly one layer)."""
    assert {_layer(m) for m in GRAPH} == set(range(len(LAYERS)))
    assert _violations(GRAPH, lambda m, i: _layer(i) > _layer(m)) == []

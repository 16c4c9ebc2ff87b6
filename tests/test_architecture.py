"""The house rules of docs/architecture.md, checked on the source: what may import what, and module size."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("mae", "automl")
MAX_LINES = 620  # "no module over ~600 lines"
# The layers of `mae`, lowest first: a module may import its own layer and those below, never above.
MAE_LAYERS = [
    {"mae.errors", "mae.metrics", "mae.layout", "mae.fileio", "mae.resources", "mae.models.archs"},
    {"mae.config", "mae.spec", "mae.schemas", "mae.tracking"},
    {"mae.models", "mae.data"},
    {"mae.engine"},
    {"mae.deploy"},
    {"mae.actions", "mae.cli"},
]
TORCH_FREE = ("mae.metrics", "mae.layout", "mae.errors")


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in (REPO / pkg).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.If) and top_level_only:  # `if TYPE_CHECKING:` blocks do not run
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.split(".")[0] in PACKAGES}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def test_mae_never_imports_automl():
    bad = {
        name: sorted(m for m in _imports(path, top_level_only=False) if m.startswith("automl"))
        for name, path in _modules().items()
        if name.startswith("mae")
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_no_import_cycles_at_module_level():
    modules = _modules()
    graph = {
        name: {r for m in _imports(path, top_level_only=True) if (r := _resolve(m, modules)) and r != name}
        for name, path in modules.items()
    }
    # a package's __init__ importing its own submodules is how packages re-export; not a cycle of concepts
    for name in graph:
        graph[name] = {
            d for d in graph[name] if not (name.startswith(d + ".") and modules[d].name == "__init__.py")
        }
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def _layer(name: str) -> int | None:
    for i, layer in enumerate(MAE_LAYERS):
        if any(name == m or name.startswith(m + ".") for m in layer):
            return i
    return None


def test_mae_layers_point_down():
    modules = _modules()
    upward = []
    for name, path in modules.items():
        mine = _layer(name)
        if mine is None:
            continue
        for imported in _imports(path, top_level_only=False):
            target = _resolve(imported, modules)
            theirs = _layer(target) if target else None
            if theirs is not None and theirs > mine:
                upward.append(f"{name} -> {target}")
    assert upward == []


@pytest.mark.parametrize("name", TORCH_FREE)
def test_shared_facts_are_torch_free(name):
    path = _modules()[name]
    tree = ast.parse(path.read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "lightning", "pytorch_lightning", "ray")}


def test_no_module_is_too_long():
    long = {
        name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}

"""The Python blocks of README.md and docs/: they parse, and every name they import exists (a renamed or moved
function otherwise leaves the docs pointing at nothing, as the search-space API block once did)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import re

import pytest

from tests.conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    for path in DOCS:
        for i, m in enumerate(BLOCK.finditer(path.read_text())):
            yield pytest.param(m.group(1), id=f"{path.relative_to(REPO)}#{i}")


def test_the_docs_have_python_blocks():
    assert len(list(_blocks())) >= 2  # docs/automl.md's API and docs/automl_search_spaces.md's


@pytest.mark.parametrize("code", list(_blocks()))
def test_docs_python_block_parses_and_its_imports_exist(code):
    tree = ast.parse(code)  # a SyntaxError names the line
    modules = {}  # names bound to modules by `import X`
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                modules[alias.asname or alias.name] = importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom) and node.module:
            module = importlib.import_module(node.module)
            for alias in node.names:
                submodule = hasattr(module, "__path__") and importlib.util.find_spec(
                    f"{node.module}.{alias.name}"
                )
                assert hasattr(module, alias.name) or submodule, (
                    f"from {node.module} import {alias.name}: no such name"
                )
    for node in ast.walk(tree):  # automl.run(...), automl.experiment_status(...): the module has them
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules:
            assert hasattr(modules[node.value.id], node.attr), f"{node.value.id}.{node.attr}: no such name"

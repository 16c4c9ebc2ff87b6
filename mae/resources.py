"""Where the project's data folders are: the generated `schemas/` and the curated `search_spaces/`.

Both stay at the top of the repository; pyproject.toml maps them (package-dir) onto the resource packages
`mae.schema_files` and `mae.search_spaces`, so a wheel carries them inside `mae/` and an editable install
points the same names at the repository's folders. They are found through importlib.resources; from a
source tree put on sys.path without any install, the names do not import and the folders beside the
packages are used. Both resource packages live under `mae` (not `automl`) so that finding them imports
nothing but `mae/__init__.py`: no torch, no Ray, and `mae` never imports `automl`.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

__all__ = ["schema_dir", "search_spaces_dir"]

SCHEMA_PACKAGE = "mae.schema_files"
SEARCH_SPACES_PACKAGE = "mae.search_spaces"
_SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _folder(package: str, top_level: str) -> Path:
    try:
        root = importlib.resources.files(package)
    except ModuleNotFoundError:
        return _SOURCE_ROOT / top_level
    # The folders hold data only (no __init__.py), so each is a namespace package and importlib returns
    # a MultiplexedPath; a name joined to it is a real Path inside its (single) folder, on Python 3.10+.
    return Path(os.fspath(root.joinpath("__init__.py"))).resolve().parent


def schema_dir() -> Path:
    """The folder of the generated schemas (`schemas/` in the repository)."""
    return _folder(SCHEMA_PACKAGE, "schemas")


def search_spaces_dir() -> Path:
    """The folder of the curated search spaces (`search_spaces/` in the repository)."""
    return _folder(SEARCH_SPACES_PACKAGE, "search_spaces")

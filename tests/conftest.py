"""Shared fixtures. Ray, S3 and other heavy fixtures live beside the tests that need them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def write_spec(tmp_path):
    """write_spec(dict_or_text) -> path of a YAML spec file in a temporary folder."""

    def write(content, name: str = "spec.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """An existing (empty) folder to stand in for a data source where only its existence is checked."""
    d = tmp_path / "images"
    d.mkdir()
    return d

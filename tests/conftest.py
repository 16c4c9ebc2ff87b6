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


def _restore_env(saved: dict) -> None:
    """Put environment variables back as `saved` ({name: value or None for unset}) holds them."""
    import os

    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session", autouse=True)
def _hermetic_cache(tmp_path_factory):
    """Data-source cache and MLflow in temporary folders: tests never touch ~/.cache or a tracking server."""
    import os

    saved = {k: os.environ.get(k) for k in ("MAE_CACHE_DIR", "MLFLOW_TRACKING_URI")}
    os.environ["MAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("mae_cache"))
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    yield
    _restore_env(saved)


@pytest.fixture(autouse=True)
def _restore_process_state():
    """A CLI's main() run in-process (benchmarks, `mae`, `automl`) may point MLflow elsewhere through the
    environment and hand the package loggers a handler on pytest's captured stderr, which is closed after the
    test: both are put back, so that later tests log where they expect to."""
    import logging
    import os

    env = {k: os.environ.get(k) for k in ("MAE_CACHE_DIR", "MLFLOW_TRACKING_URI")}
    loggers = {n: logging.getLogger(n) for n in ("mae", "automl")}
    saved = {n: (lg.handlers[:], lg.level, lg.propagate) for n, lg in loggers.items()}
    yield
    _restore_env(env)
    for n, lg in loggers.items():
        handlers, level, lg.propagate = saved[n]
        lg.handlers[:] = handlers
        lg.setLevel(level)  # (setLevel, not .level: the loggers cache their effective level)


@pytest.fixture(scope="session")
def digits(tmp_path_factory) -> dict[str, Path]:
    """scikit-learn's real digits as images_{train,val,test}.tar.gz of class folders (32x32 RGB PNG)."""
    from mae.data.digits import build_digits_dataset

    return build_digits_dataset(tmp_path_factory.mktemp("digits"))


def write_digit_folders(root: Path, per_class: int, *, offset: int = 0, size: int = 32) -> Path:
    """`per_class` real digits per class as class folders under root (fast, for small training tests)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    for cls in range(10):
        (root / str(cls)).mkdir(parents=True, exist_ok=True)
        idx = np.flatnonzero(d.target == cls)[offset : offset + per_class]
        for i in idx:
            img = Image.fromarray((d.images[i] * 255 / 16).astype("uint8"), mode="L").resize((size, size))
            img.convert("RGB").save(root / str(cls) / f"d{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def digits_small(tmp_path_factory) -> dict[str, Path]:
    """A small labelled split (train: 12 per class, val: 6 per class) as plain folders."""
    base = tmp_path_factory.mktemp("digits_small")
    return {
        "train": write_digit_folders(base / "train", 12),
        "val": write_digit_folders(base / "val", 6, offset=12),
    }

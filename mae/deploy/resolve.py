"""Deploy artifacts: parent-model resolution, default output names, overwrite
protection and atomic writes.

A results folder may stand wherever a deploy artifact is expected:
  gen_trt_engine.onnx_file, evaluate/inference.checkpoint (ONNX)  <- the parent's ONNX file
  evaluate/inference.trt_engine                                     <- the parent's engine
Inside a folder, the artifact is looked for in the folder itself, then its export/ (or gen_trt_engine/), then
automl/best/; in the first of those that holds any, the one named after `model_name` wins, else the newest.
The choice is printed. Outputs (export.onnx_file, gen_trt_engine.trt_engine) default to
`<action results folder>/<model_name>.<suffix>`; an existing folder given as the output gets that name inside it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from mae.errors import CheckpointError, ConfigError
from mae.layout import ExperimentLayout

ONNX_SUFFIXES = (".onnx",)
ENGINE_SUFFIXES = (".engine", ".trt", ".plan")


def _newest(paths: list[Path]) -> Path:
    return max(paths, key=lambda p: (p.stat().st_mtime, p.name))


def find_artifact(
    folder: str | os.PathLike, suffixes: tuple[str, ...], subdir: str, prefer_name: str | None = None
) -> Path | None:
    """The artifact a results folder stands for (see the module docstring), or None."""
    folder = Path(folder)
    for d in (folder, folder / subdir, ExperimentLayout(folder).best):
        if not d.is_dir():
            continue
        files = [p for p in d.iterdir() if p.is_file() and p.suffix in suffixes]
        if files:
            named = [p for p in files if p.stem == prefer_name]
            return named[0] if named else _newest(files)
    return None


def _resolve(
    path: str | os.PathLike,
    *,
    key: str,
    suffixes: tuple[str, ...],
    subdir: str,
    what: str,
    model_name: str | None,
) -> Path:
    p = Path(os.path.expanduser(str(path)))
    if p.is_file():
        return p
    if p.is_dir():
        found = find_artifact(p, suffixes, subdir, model_name)
        if found is None:
            raise CheckpointError(
                f"{key}={str(path)!r}: the folder holds no {what} ({'/'.join(suffixes)}; looked in it, "
                f"{subdir}/ and automl/best/); give the file itself or the results folder of that run"
            )
        print(f"{key}: using {found} (from results folder {p})")
        return found
    raise CheckpointError(f"{key}={str(path)!r}: no such file or folder")


def resolve_onnx(path: str | os.PathLike, *, key: str, model_name: str | None = None) -> Path:
    """An .onnx file, or the one an export results folder (or a results root) holds."""
    return _resolve(
        path, key=key, suffixes=ONNX_SUFFIXES, subdir="export", what="ONNX file", model_name=model_name
    )


def resolve_engine(path: str | os.PathLike, *, key: str, model_name: str | None = None) -> Path:
    """A TensorRT engine file, or the one a gen_trt_engine results folder (or a results root) holds."""
    return _resolve(
        path,
        key=key,
        suffixes=ENGINE_SUFFIXES,
        subdir="gen_trt_engine",
        what="TensorRT engine",
        model_name=model_name,
    )


def output_path(value: str | None, *, default_dir: str | os.PathLike, name: str, suffix: str) -> Path:
    """Where an action writes its artifact: the value given, or `<default_dir>/<name><suffix>`; an existing
    folder (or a value ending in '/') gets `<name><suffix>` inside it."""
    if not value:
        return Path(default_dir) / f"{name}{suffix}"
    p = Path(os.path.expanduser(value))
    if p.is_dir() or value.endswith(("/", os.sep)):
        return p / f"{name}{suffix}"
    return p


def check_free(paths: Iterable[Path], *, key: str, overwrite: bool, overwrite_key: str) -> None:
    """Refuse to replace existing files unless `overwrite` (a ConfigError naming the way out)."""
    paths = list(paths)
    for p in paths:
        if p.is_dir():
            raise ConfigError(f"{key}={str(paths[0])!r}: {p} is a folder; give a file name")
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{key}: {' and '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; refusing to "
            f"overwrite: set {overwrite_key}=true to replace {'it' if len(existing) == 1 else 'them'}, "
            f"or choose another {key}"
        )

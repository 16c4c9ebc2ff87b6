"""Checkpoint files: atomic writes, safe reads, and parent-model resolution (a results folder may stand
wherever a checkpoint is expected, PRODUCT.md section 6).

Our checkpoints are Lightning `.ckpt` files (the full training state, for resume). Their `hyper_parameters`
hold plain data only (the resolved spec, stage, arch, classes), so every checkpoint loads with
`torch.load(weights_only=True)`: a checkpoint from outside cannot run code when it is read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mae.errors import CheckpointError
from mae.fileio import atomic_open, read_torch_file

log = logging.getLogger("mae")

CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint atomically (mae.fileio), so a crash mid-write never leaves a truncated
    `last.ckpt`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint as a dict, read with weights_only=True (mae.fileio.read_torch_file)."""
    obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def checkpoint_meta(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Our metadata (stage, arch, num_classes, classes, spec) or {} for checkpoints from elsewhere."""
    hp = ckpt.get("hyper_parameters") or {}
    return hp.get("mae", {}) if isinstance(hp, dict) else {}


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def find_checkpoint(folder: str | os.PathLike, prefer: str = "best") -> Path | None:
    """The checkpoint a results folder stands for: best (else last, else newest) for prefer='best'; last
    (else newest) for prefer='last'. Looks in the folder, its checkpoints/, train/checkpoints/ and automl/best/."""
    folder = Path(folder)
    candidates = [
        folder,
        folder / "checkpoints",
        folder / "train" / "checkpoints",
        folder / "automl" / "best",
        folder / "best",
    ]
    order = ["best.ckpt", "last.ckpt"] if prefer == "best" else ["last.ckpt"]
    for d in candidates:
        for name in order:
            if (d / name).is_file():
                return d / name
    for d in candidates:
        found = _newest([p for p in d.glob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES])
        if found:
            return found
    return None


def resolve_checkpoint(path: str | os.PathLike, *, key: str, prefer: str = "best") -> Path:
    """A checkpoint file, or the right checkpoint inside a results folder (the choice is logged)."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_file():
        return p
    if p.is_dir():
        found = find_checkpoint(p, prefer)
        if found is None:
            raise CheckpointError(f"{key}={str(path)!r}: the folder holds no checkpoint (*.ckpt, *.pth)")
        log.info("%s: using %s from results folder %s", key, found.name, p)
        return found
    raise CheckpointError(f"{key}={str(path)!r}: no such file or folder")

"""Files written atomically and checkpoints read safely: the one home of both habits.

Every file the product writes goes to a temporary name in the same folder, is flushed to disk, then renamed
into place, so a crash never leaves a truncated file where a good one was (or is expected). Every PyTorch file
from outside is read with `torch.load(weights_only=True)`, so a malicious pickle cannot run code.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from mae.errors import CheckpointError


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit fsync it and rename it to `path`, on an error
    remove it (the old `path`, if any, stays as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return Path(path)


def read_torch_file(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True) on the CPU; a one-line CheckpointError for a missing, damaged or unsafe file."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check the path in the spec)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (  # what torch.load raises on files that are not intact, safe PyTorch checkpoints
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        IndexError,
        KeyError,
        zipfile.BadZipFile,
    ) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"cannot read checkpoint {path} safely (weights_only=True): {first}; expected a PyTorch file "
            "(.ckpt/.pth) of tensors"
        ) from None

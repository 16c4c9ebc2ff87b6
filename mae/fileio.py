"""Files written atomically and checkpoints read safely: the one home of both habits.

Every file the product writes goes to a temporary name in the same folder, is flushed to disk, then renamed
into place, so a crash never leaves a truncated file where a good one was (or is expected). Every PyTorch file
from outside is read with `torch.load(weights_only=True)`, so a malicious pickle cannot run code.
"""

from __future__ import annotations

import os
import tempfile
import warnings
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


def json_safe(o: Any) -> Any:
    """NaN and infinities (a diverged trial's val_loss) become null, numpy scalars plain numbers, paths strings:
    what this product writes stays standard JSON."""
    import math

    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, (str, int, bool)) or o is None:
        return o
    if hasattr(o, "item") and callable(o.item):  # numpy / torch scalars
        return json_safe(o.item())
    return str(o)


def atomic_write_json(path: str | os.PathLike, data: Any, *, indent: int | None = 1) -> Path:
    """`data` as standard JSON (see json_safe), written atomically."""
    import json

    return atomic_write_text(path, json.dumps(json_safe(data), indent=indent, allow_nan=False) + "\n")


def read_torch_file(path: str | os.PathLike) -> Any:
    """torch.load(weights_only=True) on the CPU; a one-line CheckpointError for a missing, damaged or unsafe file."""
    import pickle
    import zipfile

    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (check the path in the spec)")
    try:
        with (
            warnings.catch_warnings()
        ):  # torch's note on a newer pickle protocol: the error below says it all
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
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
        raise CheckpointError(
            f"cannot read checkpoint {path}: {_unreadable_why(path, e)}; expected a PyTorch file (.ckpt/.pth) "
            "of tensors, as torch.save writes"
        ) from None


def _unreadable_why(path: Path, e: BaseException) -> str:
    """What is wrong with a file torch.load refused, in a few words (torch's own text is a paragraph)."""
    import re

    text = str(e)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds a {found.group(1)} object, not only tensors and plain data, and is not loaded for safety "
            "(weights_only=True)"
        )
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as oe:
        return oe.strerror or type(oe).__name__
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip format
        first = text.strip().splitlines()[0].split(". ")[0][:200] if text.strip() else type(e).__name__
        return f"it is damaged or truncated ({first})"
    if head[:1] == b"\x80":  # a pickle, but not one the safe loader reads
        return (
            "it is a pickle that torch's safe loader (weights_only=True) refuses: not written by torch.save, or "
            "holding objects other than tensors and plain data"
        )
    return "it is not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)"

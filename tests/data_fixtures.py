"""Helpers shared by the data tests: small images, broken images, class trees and tar archives.

No tests here; the data test modules import these functions.
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP", ".webp": "WEBP", ".tif": "TIFF"}


def image_bytes(size=(40, 30), color=(200, 30, 60), fmt: str = "JPEG") -> bytes:
    """An image with a gradient (so crops and flips change it) encoded as `fmt`."""
    w, h = size
    x = np.arange(w)[None, :].repeat(h, 0)
    y = np.arange(h)[:, None].repeat(w, 1)
    rgb = np.stack([(color[0] + 3 * x) % 256, (color[1] + 5 * y) % 256, np.full_like(x, color[2])], axis=-1)
    img = Image.fromarray(rgb.astype(np.uint8))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def write_image(path: str | os.PathLike, size=(40, 30), color=(200, 30, 60)) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = FORMATS[path.suffix.lower()]
    path.write_bytes(image_bytes(size, color, fmt))
    return path


def write_truncated_jpeg(path: str | os.PathLike, size=(160, 120)) -> Path:
    """A JPEG whose header is intact but whose data stops part way: it passes `Image.open` (the header
    check) and fails to decode."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = image_bytes(size, fmt="JPEG")
    path.write_bytes(data[: int(len(data) * 0.7)])
    return path


def write_garbage(path: str | os.PathLike, data: bytes = b"this is not an image") -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_class_tree(root: str | os.PathLike, counts: dict[str, int], size=(40, 30)) -> Path:
    """root/<class>/<i>.jpg with counts[class] images each (distinct colours per class)."""
    root = Path(root)
    for ci, (cls, n) in enumerate(sorted(counts.items())):
        for i in range(n):
            write_image(root / cls / f"{i:03d}.jpg", size=size, color=(40 * ci % 256, 10 * i % 256, 90))
    return root


def make_tar(archive: str | os.PathLike, folder: str | os.PathLike, arcname: str | None = None) -> Path:
    """Pack `folder` (as `arcname`, default its name) into `archive`; compression from the suffix."""
    archive = Path(archive)
    mode = "w:gz" if archive.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(archive, mode) as tf:
        tf.add(str(folder), arcname=arcname if arcname is not None else Path(folder).name)
    return archive


def tar_with_members(archive: str | os.PathLike, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    """An archive of hand-made members (for the malicious-archive tests)."""
    archive = Path(archive)
    mode = "w:gz" if archive.name.endswith((".tar.gz", ".tgz")) else "w"
    with tarfile.open(archive, mode) as tf:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                tf.addfile(info)
    return archive


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.mode = 0o644 if kind == tarfile.REGTYPE else 0o755
    return info


def files_under(root: str | os.PathLike) -> set[str]:
    """Every path (files, links, folders) below root, relative, as posix strings."""
    root = Path(root)
    out = set()
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            out.add((Path(dirpath) / name).relative_to(root).as_posix())
    return out

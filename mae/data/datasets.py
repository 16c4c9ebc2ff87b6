"""Image datasets over prepared folders (see `mae.data.sources`).

  ImageFolderSSL      pretraining ("ssl"): every image below the root(s), any layout -> (image, 0)
  ClassFolderDataset  finetune/evaluate: one subfolder per class -> (image, class index)
  ImageListDataset    inference: every image below the root(s) -> (image, display path)

Images are the files ending in .jpg, .jpeg, .png, .bmp, .webp, .tif or .tiff (any case), found recursively in
a sorted, reproducible order; hidden files and folders (".x", including macOS "._x" resource forks) and
`__MACOSX/` are ignored, symlinked folders are followed (once).

`ImageFolderSSL` returns `(image, 0)` rather than the bare image so that every loader yields
`(images, second)` batches and the engine unpacks them the same way (`imgs = batch[0]`).

Unreadable images are skipped and counted, never a crash, in two places:
  - when the dataset is built (`verify=True`, the default), each file's header is read (PIL `Image.open`,
    no decoding: ~0.1 ms per file, in threads). Non-images, empty and garbage files are dropped there,
    reported in one warning line with the count and an example;
  - while loading, a file that fails to decode (typically a truncated image, whose header is fine) is
    recorded in a table shared with the DataLoader workers and handled by `on_error`:
      "substitute" (training default): the next readable image is returned instead, so batches keep their
                   size (even batches for mixup; the same number of steps on every DDP rank);
      "drop" (inference default): the sample becomes None; `mae.data.build_loader`'s collate leaves it
                   out and empty batches are skipped, so no wrong row is produced.
    `report_skipped()` logs one line with the running count; loaders from `build_loader` call it at the end
    of each pass over the data.
An empty dataset (no images, or none readable) is a DataError naming the source.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import multiprocessing.context
import os
import struct
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps
from torch.utils.data import Dataset

from mae.data.decode_count import count_decode
from mae.data.sources import IMG_EXTENSIONS, display_name, is_image_name
from mae.errors import DataError

log = logging.getLogger("mae.data")

# What PIL raises for a broken file (UnidentifiedImageError and "image file is truncated" are OSErrors).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)
_ORIENTATION = 0x0112  # EXIF tag
MAX_SUBSTITUTES = 64  # consecutive unreadable images tolerated before giving up
ON_ERROR = ("substitute", "drop")

Roots = str | os.PathLike | Sequence[str | os.PathLike]


# ------------------------------------------------------------------------------------------- files


def _as_roots(root: Roots) -> list[Path]:
    roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
    if not roots:
        raise DataError("no data source folder given")
    out = []
    for r in roots:
        p = Path(r).expanduser()
        if not p.is_dir():
            raise DataError(f"data folder not found: {display_name(p)}")
        out.append(p)
    return out


def _label(roots: Sequence[Path]) -> str:
    return ", ".join(display_name(r) for r in roots)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name != "__MACOSX"


def find_images(root: str | os.PathLike) -> list[Path]:
    """Every image file below `root`, sorted; hidden entries skipped, symlinked folders followed once."""
    root = Path(root)
    seen: set[tuple[int, int]] = set()
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen:  # a link cycle, or a folder reached twice
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        found.extend(os.path.join(dirpath, f) for f in filenames if _visible(f) and is_image_name(f))
    found.sort()
    return [Path(f) for f in found]


def find_classes(root: Roots) -> list[str]:
    """The class folder names below `root` (a folder or several), sorted: the union of visible subfolders
    (hidden ones and `__MACOSX` left out). The order `ClassFolderDataset` uses when given no classes."""
    return sorted({p.name for r in _as_roots(root) for p in r.iterdir() if p.is_dir() and _visible(p.name)})


def load_rgb(path: str | os.PathLike, min_side: int | None = None) -> Image.Image:
    """Decode an image as RGB: EXIF orientation applied, palette transparency and CMYK/L/I;16 converted.

    `min_side`: the transform never needs more than this many pixels on the short side, so a JPEG that is at
    least twice as large is decoded at 1/2, 1/4 or 1/8 scale in the DCT domain (PIL `draft`), keeping the
    short side >= min_side. Several times faster for camera-sized photos; no effect on small images."""
    count_decode(path)  # a no-op unless MAE_COUNT_DECODES is set (benchmarks)
    with Image.open(path) as img:
        if min_side and img.format == "JPEG" and min(img.size) >= 2 * min_side:
            img.draft("RGB", (min_side, min_side))
        if img.getexif().get(_ORIENTATION, 1) != 1:
            img = ImageOps.exif_transpose(img)
        if img.mode == "P" and "transparency" in img.info:
            img = img.convert("RGBA")
        return img.convert("RGB")


def check_image(path: str | os.PathLike) -> str | None:
    """None when the file has a readable image header with a non-empty size, else the reason."""
    try:
        with Image.open(path) as img:
            w, h = img.size
    except DECODE_ERRORS as e:
        return _reason(e, path)
    if w <= 0 or h <= 0:
        return "empty image"
    return None


def _reason(e: BaseException, path: str | os.PathLike | None = None) -> str:
    """The first line of PIL's message, without the file name (the caller names the file)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    if path is not None:
        text = text.replace(f" {os.fspath(path)!r}", "").replace(os.fspath(path), "the file")
    return text


# ---------------------------------------------------------------------------------------- datasets


class _ImageDataset(Dataset):
    """Files + targets + transform, with verification and skip accounting shared across workers."""

    stored: Any = None  # a mae.data.store.StoreReader once use_store() has attached a decoded store
    report_after_pass = True  # False: the training engine reports per epoch instead (mae.engine.callbacks)

    def __init__(
        self,
        files: list[Path],
        targets: list[int],
        transform: Callable | None,
        *,
        label: str,
        verify: bool,
        on_error: str,
        what: str,
    ):
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error={on_error!r}; expected one of {ON_ERROR}")
        self.label = label
        self.transform = transform
        self.on_error = on_error
        self.skipped_at_index: list[tuple[str, str]] = []  # (path, reason) dropped when indexing
        if not files:
            raise DataError(
                f"{label}: no images found (looked for {', '.join(IMG_EXTENSIONS)} files{what}); check the "
                "data source"
            )
        if verify:
            files, targets = self._verify(files, targets)
        self.files = [str(f) for f in files]
        self.targets = list(targets)
        self._failed = _shared_flags(len(self.files))
        self._reported = 0

    # -- indexing

    def _verify(self, files: list[Path], targets: list[int]) -> tuple[list[Path], list[int]]:
        with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
            reasons = list(pool.map(check_image, files, chunksize=64))
        keep = [i for i, r in enumerate(reasons) if r is None]
        self.skipped_at_index = [(str(files[i]), r) for i, r in enumerate(reasons) if r is not None]
        if not keep:
            example = self.skipped_at_index[0]
            raise DataError(
                f"{self.label}: none of the {len(files)} image files is readable (e.g. "
                f"{display_name(example[0])}: {example[1]})"
            )
        if self.skipped_at_index:
            path, reason = self.skipped_at_index[0]
            log.warning(
                "%s: skipped %d of %d image files that are not readable images (e.g. %s: %s)",
                self.label,
                len(self.skipped_at_index),
                len(files),
                display_name(path),
                reason,
            )
        return [files[i] for i in keep], [targets[i] for i in keep]

    # -- loading

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx: int):
        n = len(self.files)
        for k in range(min(n, MAX_SUBSTITUTES + 1)):
            j = (idx + k) % n
            if self._failed[j]:
                if self.on_error == "drop":
                    return None
                continue
            try:
                img = self.load(j)
            except DECODE_ERRORS as e:
                self._failed[j] = 1
                log.debug("%s: cannot decode %s: %s", self.label, self.files[j], _reason(e, self.files[j]))
                if self.on_error == "drop":
                    return None
                continue
            if self.transform is not None:
                img = self.transform(img)
            return self._item(j, img)
        raise DataError(
            f"{self.label}: {min(n, MAX_SUBSTITUTES + 1)} images in a row could not be decoded (from "
            f"{display_name(self.files[idx % n])}); the data looks damaged"
        )

    def load(self, j: int) -> Any:
        """Image j: decoded from its file, or read from the decoded store once one is attached."""
        if self.stored is not None:
            return self.stored.read(j, self.transform)
        return load_rgb(self.files[j], getattr(self.transform, "decode_min_side", None))

    def _item(self, j: int, img: Any) -> tuple[Any, Any]:
        return img, self.targets[j]

    # -- accounting

    @property
    def failed_files(self) -> list[str]:
        """Files that failed to decode while loading (in this process or its DataLoader workers)."""
        flags = bytes(self._failed)
        return [self.files[i] for i, f in enumerate(flags) if f]

    @property
    def num_skipped(self) -> int:
        """Files left out: at indexing (unreadable header) plus while loading (failed to decode)."""
        return len(self.skipped_at_index) + bytes(self._failed).count(1)

    def report_skipped(self) -> int:
        """Log one line when more images failed to decode since the last report; returns the count."""
        count = bytes(self._failed).count(1)
        if count > self._reported and self.report_after_pass:
            example = display_name(self.failed_files[0])
            action = "replaced by the next readable image" if self.on_error == "substitute" else "left out"
            log.warning(
                "%s: %d image(s) could not be decoded and were %s (e.g. %s)",
                self.label,
                count,
                action,
                example,
            )
            self._reported = count
        return count

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        if multiprocessing.context.get_spawning_popen() is None:
            # pickled for something other than starting a worker (e.g. Ray): shared memory cannot travel
            state["_failed"] = bytearray(bytes(self._failed))
        return state


def _shared_flags(n: int):
    """n zero bytes in shared memory: DataLoader workers (forked or spawned) mark failures the parent sees."""
    return multiprocessing.RawArray(ctypes.c_uint8, n)


class ImageFolderSSL(_ImageDataset):
    """Unlabelled images for pretraining: every image below `root` (a folder or a list of folders), in any
    layout. Items are `(transform(image), 0)`."""

    def __init__(
        self,
        root: Roots,
        transform: Callable | None = None,
        *,
        verify: bool = True,
        on_error: str = "substitute",
    ):
        roots = _as_roots(root)
        self.roots = roots
        files = [f for r in roots for f in find_images(r)]
        super().__init__(
            files,
            [0] * len(files),
            transform,
            label=_label(roots),
            verify=verify,
            on_error=on_error,
            what=" in any subfolder",
        )


class ClassFolderDataset(_ImageDataset):
    """Labelled images, one subfolder per class: `root/<class>/**/<image>`. Items are
    `(transform(image), class_index)`.

    `classes`: the class order to use (e.g. a checkpoint's classes.json); default: the subfolder names
    sorted (a stable order, the same on every machine). A subfolder that is not among `classes` is an error;
    a class without a subfolder here is allowed (several roots may each hold some classes). Images lying
    directly in `root` are ignored with a warning.
    """

    def __init__(
        self,
        root: Roots,
        transform: Callable | None = None,
        classes: Sequence[str] | None = None,
        *,
        verify: bool = True,
        on_error: str = "substitute",
    ):
        roots = _as_roots(root)
        self.roots = roots
        label = _label(roots)
        found = find_classes(roots)
        if classes is None:
            if not found:
                raise DataError(
                    f"{label}: no class subfolders found; finetune and evaluate read one subfolder per class "
                    "(e.g. <source>/cat/001.jpg, <source>/dog/002.jpg)"
                )
            classes = found
        classes = [str(c) for c in classes]
        if len(set(classes)) != len(classes):
            raise DataError(f"{label}: the class list repeats a name: {classes}")
        known = set(classes)
        unknown = [c for c in found if c not in known]
        if unknown:
            shown = ", ".join(classes[:8]) + (", ..." if len(classes) > 8 else "")
            raise DataError(
                f"{label}: class folder(s) {', '.join(unknown)} are not among the {len(classes)} expected "
                f"classes ({shown}); evaluate on the classes the model was trained on"
            )
        self.classes: list[str] = classes
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(classes)}
        files: list[Path] = []
        targets: list[int] = []
        empty = []
        for c in classes:
            n_before = len(files)
            for r in roots:
                d = r / c
                if d.is_dir():
                    imgs = find_images(d)
                    files.extend(imgs)
                    targets.extend([self.class_to_idx[c]] * len(imgs))
            if c in found and len(files) == n_before:
                empty.append(c)
        loose = sum(
            1
            for r in roots
            for p in r.iterdir()
            if p.is_file() and _visible(p.name) and is_image_name(p.name)
        )
        if loose:
            log.warning(
                "%s: ignored %d image(s) lying directly in the folder; classes are read from subfolders",
                label,
                loose,
            )
        if empty:
            log.warning("%s: class folder(s) without images: %s", label, ", ".join(empty))
        super().__init__(
            files,
            targets,
            transform,
            label=label,
            verify=verify,
            on_error=on_error,
            what=" in class subfolders",
        )


def _display_names(files: list[str], roots: list[Path]) -> list[str]:
    """display_name for many files, looking up each root's source once (not once per file)."""
    prefixes = []
    for r in roots:
        absolute = os.path.abspath(r)
        prefixes.append((absolute + os.sep, display_name(absolute).rstrip("/") + "/"))
    names = []
    for f in files:
        a = os.path.abspath(f)
        for prefix, shown in prefixes:
            if a.startswith(prefix):
                names.append(shown + os.path.relpath(a, prefix).replace(os.sep, "/"))
                break
        else:  # pragma: no cover - every file comes from one of the roots
            names.append(display_name(a))
    return names


class ImageListDataset(ImageFolderSSL):
    """Every image below `root` for inference. Items are `(transform(image), name)` where `name` is the
    absolute path for a local folder and `<source>/<path in it>` for an archive or S3 source
    (`mae.data.display_name`). Undecodable images are left out (`on_error="drop"`)."""

    def __init__(
        self,
        root: Roots,
        transform: Callable | None = None,
        *,
        verify: bool = True,
        on_error: str = "drop",
    ):
        super().__init__(root, transform, verify=verify, on_error=on_error)
        self.names = _display_names(self.files, self.roots)

    def _item(self, j: int, img: Any) -> tuple[Any, str]:
        return img, self.names[j]

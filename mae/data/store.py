"""Decoded image store: a dataset decoded once, memory-mapped, shared by every run and trial on a node.

An AutoML search trains on the same images dozens of times, and decoding every JPEG at every epoch of every
trial is most of the input pipeline's work. The store decodes each image once (EXIF orientation applied,
RGB, large JPEGs decoded at reduced scale as `load_rgb` does), resizes it so that its short side is
`short_side` (smaller images are kept as they are, never upscaled), and keeps the uint8 pixels in the data
cache (`mae.data.sources.default_cache_dir`):

    <cache>/stores/<name>-<short_side>px-<digest>/
        pixels.u8     every image's H x W x 3 bytes (RGB, row-major), one after the other
        index.npy     int64 [N, 4] per file: byte offset, height, width, 1 = decoded / 0 = could not be
        store.json    format version, short side, the files (sorted absolute paths), bytes, build time

Key (`digest`): the data's fingerprint (every file's absolute path, size and modification time in ns), the
short side and the format version; a changed, added or removed file gives a new store. Old stores are not
deleted automatically (remove `<cache>/stores/*` to reclaim the space).

Built once, atomically: the builder holds the cache's lock for the digest (the OS file lock that guards
prepared sources, `mae.data.sources`), decodes in threads (PIL releases the GIL while decoding and
resizing) into a temporary folder and renames it into place when complete. Other processes wait for the
lock, then read the finished store. Readers map `pixels.u8` read-only (`numpy.memmap`), so the page cache
holds one copy for all the processes of a node: concurrent trials, DataLoader workers, DDP ranks.

Files that cannot be decoded are excluded and counted: the index flags them, and a dataset reading through
the store marks them in its table of failed files, the table its own decoding failures go to
(`mae.data.datasets`), so they are reported, and replaced or left out, exactly like files that fail there.

Quality trade: a crop of area fraction `a` spans about sqrt(a) * short_side stored pixels; when that is less
than input_size the crop is upscaled from the stored pixels, where the original may have had more detail.
With the default short side (input_size / 0.875: 256 for 224 px), crops of less than ~77% of the image are
upscaled; from a 500x375 original the same happens below ~36%. Disk: 3 bytes per stored pixel, ~262 KB
per 4:3 image at 256 px (ImageNet-1k: ~335 GB; choose a smaller `dataset.store_short_side`, or turn the
store off, where that does not fit). docs/data.md has the measurements.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mae.data import cache as cachemod
from mae.data.datasets import DECODE_ERRORS, _reason, load_rgb
from mae.data.extract import remove_tree
from mae.data.sources import CACHE_ENV, _locked, _slug, default_cache_dir
from mae.data.transforms import EVAL_CROP_PCT
from mae.errors import DataError
from mae.fileio import atomic_open, atomic_write_text

log = logging.getLogger("mae.data")

STORE_VERSION = 1
META_NAME = "store.json"
PIXELS_NAME = "pixels.u8"
INDEX_NAME = "index.npy"
_LOG_EVERY_S = 30.0


def default_short_side(input_size: int) -> int:
    """The stored short side when the spec leaves it open: input_size / 0.875 (256 for 224 px), the size
    evaluation resizes to, a little above the crops training takes."""
    return int(math.floor(input_size / EVAL_CROP_PCT))


def store_digest(files: Sequence[str], short_side: int) -> str:
    """The store's key: format version, short side, and each file's absolute path, size and mtime (ns)."""
    h = hashlib.sha256(f"mae-store-v{STORE_VERSION}\0{int(short_side)}\0".encode())
    for f in files:
        st = os.stat(f)
        h.update(f"{f}\t{st.st_size}\t{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


# ------------------------------------------------------------------------------------------- reading


class ImageStore:
    """A finished store (see the module docstring): `array(row)` is image `row` as a read-only H x W x 3
    uint8 view of the memory map. Pickles without the map (reopened lazily in the receiving process)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        try:
            meta = json.loads((self.folder / META_NAME).read_text())
            self.index: np.ndarray = np.load(self.folder / INDEX_NAME)
        except (OSError, ValueError) as e:
            raise DataError(
                f"the decoded image store {self.folder} is damaged ({e}); delete it and run again"
            ) from None
        if meta.get("version") != STORE_VERSION:
            raise DataError(
                f"{self.folder}: store format {meta.get('version')}, this version reads {STORE_VERSION}; "
                "delete it and run again"
            )
        self.short_side = int(meta["short_side"])
        self.files: list[str] = list(meta["files"])
        self.nbytes = int(meta["bytes"])
        self.build_seconds = float(meta.get("seconds", 0.0))
        self._pixels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.files)

    @property
    def failed(self) -> list[str]:
        """Files that could not be decoded when the store was built (excluded)."""
        return [self.files[i] for i in np.flatnonzero(self.index[:, 3] == 0)]

    def rows_for(self, files: Sequence[str | os.PathLike]) -> np.ndarray:
        """The store rows of `files` (a dataset's file list, any order)."""
        pos = {f: i for i, f in enumerate(self.files)}
        rows = np.empty(len(files), np.int64)
        for j, f in enumerate(files):
            i = pos.get(os.path.abspath(f), -1)
            if i < 0:
                raise DataError(f"{f}: not in the decoded image store {self.folder}; delete it and run again")
            rows[j] = i
        return rows

    def array(self, row: int) -> np.ndarray:
        """Image `row`: a read-only H x W x 3 uint8 view (no copy)."""
        off, h, w, ok = (int(v) for v in self.index[row])
        if not ok:
            raise DataError(f"{self.files[row]}: excluded from the store (it could not be decoded)")
        return self._map()[off : off + h * w * 3].reshape(h, w, 3)

    def _map(self) -> np.ndarray:
        if self._pixels is None:
            if self.nbytes == 0:  # every file failed to decode: numpy cannot map an empty file
                self._pixels = np.zeros(0, np.uint8)
            else:
                self._pixels = np.memmap(self.folder / PIXELS_NAME, np.uint8, mode="r", shape=(self.nbytes,))
        return self._pixels

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_pixels"] = None
        return state


class StoreReader:
    """A dataset's view of a store (`use_store`): its image j -> the stored pixels, as the read-only array
    for transforms that take arrays (`accepts_arrays`, the stored-image transforms of
    `mae.data.transforms`), else as an RGB PIL image for any other transform."""

    def __init__(self, store: ImageStore, rows: np.ndarray):
        self.store = store
        self.rows = rows

    def read(self, j: int, transform: Any = None) -> Any:
        arr = self.store.array(int(self.rows[j]))
        if getattr(transform, "accepts_arrays", False):
            return arr
        return Image.fromarray(np.array(arr))


def use_store(dataset: Any, store: ImageStore, transform: Callable | None = None) -> Any:
    """Make `dataset` (an ImageFolderSSL, ClassFolderDataset or ImageListDataset) read its images from
    `store`, optionally with another transform (a stored-image variant). Files the store could not decode
    are marked failed in the dataset's own table, so they are reported, and replaced or left out, as the
    dataset's decode failures are. Returns the dataset."""
    rows = store.rows_for(dataset.files)
    decoded = store.index[rows, 3] == 1
    if not decoded.any():
        raise DataError(f"{dataset.label}: none of the {len(rows)} images could be decoded")
    for j in np.flatnonzero(~decoded):
        dataset._failed[int(j)] = 1
    dataset.stored = StoreReader(store, rows)
    if transform is not None:
        dataset.transform = transform
    return dataset


# ------------------------------------------------------------------------------------------ building


def open_store(
    files: Iterable[str | os.PathLike],
    short_side: int,
    *,
    label: str,
    cache_dir: str | os.PathLike | None = None,
    threads: int | None = None,
) -> ImageStore:
    """The store of `files` at `short_side`, built first if no process has built it yet (see the module
    docstring). `label` names the data in messages; `threads` defaults to the CPUs this process may use."""
    if short_side < 1:
        raise DataError(f"dataset.store_short_side={short_side}: must be a positive number of pixels")
    paths = sorted({os.path.abspath(f) for f in files})
    if not paths:
        raise DataError(f"{label}: no images to store")
    digest = store_digest(paths, short_side)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    stores = cache / "stores"
    name = f"{_slug(Path(os.path.commonpath(paths)).name)}-{short_side}px-{digest[:16]}"
    entry = stores / name
    if (entry / META_NAME).is_file():
        cachemod.hold(cache, entry)  # in use from now on: the cache cap never evicts it under us
        if (entry / META_NAME).is_file():
            log.debug("%s: decoded store %s", label, entry)
            return ImageStore(entry)
    try:
        stores.mkdir(parents=True, exist_ok=True)
        with _locked(cache, digest, label):
            if (entry / META_NAME).is_file():  # another process built it while we waited
                cachemod.hold(cache, entry)
                return ImageStore(entry)
            for stale in stores.glob(name + ".tmp-*"):  # a crashed builder's leftovers
                remove_tree(stale)
            if entry.exists():  # no metadata: damaged; rebuild
                remove_tree(entry)
            tmp = Path(tempfile.mkdtemp(prefix=name + ".tmp-", dir=stores))
            try:
                _build(tmp, paths, short_side, threads or _cpus(), label)
                cachemod.hold(cache, entry)  # held before it appears, so no evictor can take it first
                os.rename(tmp, entry)
            except BaseException:
                remove_tree(tmp)
                raise
    except OSError as e:  # the cache's file system: permissions, free space
        where = f" ({e.filename})" if e.filename else ""
        raise DataError(
            f"{label}: cannot write the decoded image store in {cache}: {e.strerror or e}{where}; free some "
            f"space, set {CACHE_ENV} to another folder, or turn the store off (dataset.store=false)"
        ) from None
    cachemod.enforce_cap(cache)
    return ImageStore(entry)


def decode_for_store(path: str, short_side: int) -> np.ndarray | str:
    """A file as stored: H x W x 3 uint8 with the short side at most `short_side`; or why it failed."""
    try:
        img = load_rgb(path, short_side)
        w, h = img.size
        s = min(w, h)
        if s > short_side:
            scale = short_side / s
            size = (
                (short_side, max(1, round(h * scale))) if w <= h else (max(1, round(w * scale)), short_side)
            )
            img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        return np.asarray(img, dtype=np.uint8)
    except DECODE_ERRORS as e:
        return _reason(e, path)


def _build(tmp: Path, files: list[str], short_side: int, threads: int, label: str) -> None:
    n = len(files)
    log.info(
        "%s: decoding %d images once into the decoded store (short side %d px, %d threads)",
        label,
        n,
        short_side,
        threads,
    )
    t0 = last = time.perf_counter()
    index = np.zeros((n, 4), np.int64)
    failed: list[tuple[str, str]] = []
    offset = 0
    with ThreadPoolExecutor(max_workers=threads) as pool, atomic_open(tmp / PIXELS_NAME, "wb") as out:
        results = _in_order(pool, lambda f: decode_for_store(f, short_side), files, ahead=4 * threads + 8)
        for i, result in enumerate(results):
            if isinstance(result, str):
                failed.append((files[i], result))
            else:
                h, w = result.shape[:2]
                out.write(np.ascontiguousarray(result).data)
                index[i] = (offset, h, w, 1)
                offset += h * w * 3
            if time.perf_counter() - last > _LOG_EVERY_S:
                last = time.perf_counter()
                log.info("%s: decoded %d of %d images", label, i + 1, n)
    with atomic_open(tmp / INDEX_NAME, "wb") as f:
        np.save(f, index)
    seconds = time.perf_counter() - t0
    meta = {
        "version": STORE_VERSION,
        "short_side": short_side,
        "bytes": offset,
        "seconds": round(seconds, 3),
        "created": time.time(),
        "failed": len(failed),
        "files": files,
    }
    atomic_write_text(tmp / META_NAME, json.dumps(meta) + "\n")
    extra = ""
    if failed:
        extra = f"; {len(failed)} could not be decoded and are left out (e.g. {failed[0][0]}: {failed[0][1]})"
    log.info(
        "%s: decoded store ready: %d images, %.1f MiB, in %.1f s%s",
        label,
        n - len(failed),
        offset / 2**20,
        seconds,
        extra,
    )


def _in_order(pool: ThreadPoolExecutor, fn: Callable, items: Sequence, ahead: int) -> Iterator[Any]:
    """fn(item) for each item, computed in the pool, yielded in order, at most `ahead` in flight (memory
    stays bounded however large the dataset)."""
    pending: deque = deque()
    for item in items:
        pending.append(pool.submit(fn, item))
        if len(pending) >= ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)

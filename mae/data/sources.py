"""Data sources -> local folders of images, with a shared, content-keyed cache.

A data source is one of
  - a local folder: used in place (nothing is copied);
  - a local archive (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz): extracted safely (see `mae.data.extract`);
  - `s3://bucket/key.tar.gz` (any archive suffix above): downloaded, then extracted;
  - `s3://bucket/prefix/` (or any key without an archive suffix, or a whole bucket `s3://bucket`): every
    image object under the prefix is mirrored, keeping the relative paths.

Cache: `cache_dir` (default `$MAE_CACHE_DIR`, else `$XDG_CACHE_HOME/mae-automl` or `~/.cache/mae-automl`).
Each prepared source is a folder `sources/<name>-<digest>/` whose digest covers the source's identity:
  local archive   real path + size + modification time (ns)
  S3 archive      endpoint + bucket + key + ETag + size (one HEAD request per run)
  S3 prefix       endpoint + bucket + prefix + every (key, ETag, size) listed (one LIST per 1000 objects)
so a second run neither downloads nor extracts, and a changed source gets a new folder. A prefix snapshot
whose listing changed reuses (hard-links) the unchanged objects of the previous snapshot.

Concurrency: processes sharing a cache (parallel trials, DDP ranks, several users) serialise on a lock file
per source (`locks/<digest>.lock`, an OS file lock released even if the holder dies). The holder builds the
folder under a temporary name and renames it into place only when complete, so a reader sees a complete
folder or none; leftovers of a holder that crashed are removed by the next holder. Interrupted S3 downloads
resume from their `.part` file.

Size: `MAE_CACHE_MAX_GB` caps the cache; least recently used entries that no process uses are evicted after
a new entry is built (`mae.data.cache`; `mae cache list|clear` by hand).

An archive whose whole content is one folder named like the archive (`images_train.tar.gz` holding
`images_train/...`, TAO's convention) resolves to that folder, so class folders are found whether or not
the archive wraps them; any other layout resolves to the archive's root.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mae.data import cache as cachemod
from mae.data import s3 as s3mod
from mae.data.cache import META_NAME
from mae.data.extract import (
    UnsafeMember,
    archive_stem,
    is_archive_name,
    remove_tree,
    safe_extract,
    safe_relpath,
)
from mae.errors import DataError
from mae.fileio import atomic_write_text

log = logging.getLogger("mae.data")

CACHE_ENV = "MAE_CACHE_DIR"
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DOWNLOAD_THREADS = 8

_LABELS: dict[str, str] = {}  # prepared base folder -> source as the user wrote it (for display names)
_LABELS_LOCK = threading.Lock()


def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS)


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "mae-automl"


@dataclass(frozen=True)
class ResolvedSource:
    """What `resolve_source_info` did: where the images are and whether the cache served them."""

    source: str  # as given (credentials redacted)
    path: Path  # a local folder of images
    kind: str  # "folder" | "archive" | "s3-archive" | "s3-prefix"
    from_cache: bool  # True when nothing was downloaded or extracted
    bytes_downloaded: int = 0
    files_written: int = 0


def resolve_source(
    source: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    retry: s3mod.RetryPolicy | None = None,
    progress: Callable[[int], None] | None = None,
) -> Path:
    """A local folder holding the images of `source` (folder, archive, s3:// archive or prefix).

    `cache_dir` defaults to `default_cache_dir()`; `retry` to `RetryPolicy.from_env()`; `progress(n)` is
    called with the size of each downloaded chunk. Raises DataError for a missing, unreadable or unsafe
    source (one line naming it).
    """
    return resolve_source_info(source, cache_dir=cache_dir, retry=retry, progress=progress).path


def resolve_source_info(
    source: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    retry: s3mod.RetryPolicy | None = None,
    progress: Callable[[int], None] | None = None,
) -> ResolvedSource:
    """Like `resolve_source`, returning what was done (cache hit, bytes downloaded, files written)."""
    text = os.fspath(source).strip() if isinstance(source, (str, os.PathLike)) else None
    if not text:
        raise DataError(f"data source {source!r}: expected a folder, a .tar/.tar.gz archive or an s3:// URL")
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if text.startswith("s3://"):
        return _resolve_s3(text, cache, retry or s3mod.RetryPolicy.from_env(), progress)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.\-]*://", text) and not text.startswith("file://"):
        scheme = text.split("://", 1)[0]
        raise DataError(
            f"{s3mod.redact(text)}: the {scheme}:// scheme is not supported; use a local folder or archive, or "
            "s3://bucket/key"
        )
    if text.startswith("file://"):
        text = text[len("file://") :]
    return _resolve_local(Path(text).expanduser(), cache)


def display_name(path: str | os.PathLike) -> str:
    """How to show a file or folder of a prepared source to a user: `<source>/<path inside it>` for archives
    and S3 (the cache folder means nothing to them), the absolute path for local folders."""
    p = os.path.abspath(path)
    found = source_of(p)
    if found is None:
        return p
    base, label = found
    if p == base:
        return label
    return label.rstrip("/") + "/" + os.path.relpath(p, base).replace(os.sep, "/")


def source_of(path: str | os.PathLike) -> tuple[str, str] | None:
    """(cache entry folder, source as written) when `path` lies in a prepared cache entry, else None.
    Known from this process's resolve calls, or read from the entry's metadata (prepared elsewhere)."""
    p = os.path.abspath(path)
    with _LABELS_LOCK:
        items = list(_LABELS.items())
    for base, label in items:
        if p == base or p.startswith(base + os.sep):
            return base, label
    d = p if os.path.isdir(p) else os.path.dirname(p)
    for _ in range(4):  # the entry root is at most a few levels up from a source root
        meta = os.path.join(d, META_NAME)
        if os.path.isfile(meta):
            try:
                with open(meta) as f:
                    label = str(json.load(f)["source"])
            except (OSError, ValueError, KeyError):
                return None
            with _LABELS_LOCK:
                _LABELS[d] = label
            return d, label
        parent = os.path.dirname(d)
        if parent == d:
            break
        d = parent
    return None


# --------------------------------------------------------------------------------------------- local


def _resolve_local(path: Path, cache: Path) -> ResolvedSource:
    if path.is_dir():
        return ResolvedSource(str(path), path.resolve(), "folder", True)
    if not path.exists():
        raise DataError(
            f"data source not found: {path} (expected a folder, a .tar/.tar.gz archive or s3:// URL)"
        )
    if not is_archive_name(path.name):
        raise DataError(
            f"{path}: a file that is not a .tar, .tar.gz/.tgz, .tar.bz2 or .tar.xz archive; give a folder of "
            "images or such an archive"
        )
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: not readable (permission denied)")
    real = os.path.realpath(path)
    st = os.stat(real)
    digest = _digest("local-archive", real, st.st_size, st.st_mtime_ns)
    meta = {"source": str(path), "kind": "archive", "size": st.st_size, "mtime_ns": st.st_mtime_ns}

    def build(tmp: Path) -> tuple[int, int]:
        log.info("extracting %s", path)
        return 0, safe_extract(real, tmp, label=str(path))

    entry = _entry_name(path.name, digest)
    return _materialize(
        cache, entry, digest, str(path), "archive", meta, build, unwrap=archive_stem(path.name)
    )


# ------------------------------------------------------------------------------------------------ s3


def _resolve_s3(url_text: str, cache: Path, policy: s3mod.RetryPolicy, progress) -> ResolvedSource:
    url = s3mod.parse_s3_url(url_text)
    client = s3mod.make_client(policy)
    endpoint = s3mod.endpoint_of(client)
    if url.key and is_archive_name(url.key):
        return _resolve_s3_archive(url, client, endpoint, cache, policy, progress)
    prefix = url.key if (not url.key or url.key.endswith("/")) else url.key + "/"
    return _resolve_s3_prefix(s3mod.S3Url(url.bucket, prefix), client, endpoint, cache, policy, progress)


def _resolve_s3_archive(url, client, endpoint, cache, policy, progress) -> ResolvedSource:
    info = s3mod.head_object(client, url, policy)
    digest = _digest("s3-archive", endpoint, url.bucket, url.key, info.etag, info.size)
    meta = {
        "source": str(url),
        "kind": "s3-archive",
        "endpoint": endpoint,
        "etag": info.etag,
        "size": info.size,
    }
    name = url.key.rsplit("/", 1)[-1]

    def build(tmp: Path) -> tuple[int, int]:
        downloads = cache / "downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        archive = downloads / f"{digest[:24]}-{_slug(name)}"
        log.info("downloading %s (%s)", url, _human(info.size))
        received = 0
        if not archive.exists():
            received = s3mod.download_object(client, url.bucket, info, archive, policy, progress=progress)
        try:
            files = safe_extract(archive, tmp, label=str(url))
        finally:
            archive.unlink(missing_ok=True)  # extracted, or refused: either way the archive is not kept
        return received, files

    entry = _entry_name(name, digest)
    return _materialize(cache, entry, digest, str(url), "s3-archive", meta, build, unwrap=archive_stem(name))


def _resolve_s3_prefix(url, client, endpoint, cache, policy, progress) -> ResolvedSource:
    objects = s3mod.list_objects(client, url, policy)
    images = [o for o in objects if is_image_name(o.key)]
    if not images:
        raise DataError(
            f"{url}: no image files ({', '.join(IMG_EXTENSIONS)}) under this prefix"
            + (f" ({len(objects)} other objects)" if objects else " (it is empty or does not exist)")
            + "; give s3://bucket/prefix/ of images or s3://bucket/archive.tar.gz"
        )
    if len(images) < len(objects):
        log.info(
            "%s: mirroring %d images, ignoring %d other objects", url, len(images), len(objects) - len(images)
        )
    manifest: dict[str, list] = {}
    for obj in images:
        rel = obj.key[len(url.key) :]
        try:
            rel = safe_relpath(rel)
        except UnsafeMember as why:
            raise DataError(f"{url}: refused object key {obj.key!r}: it {why}") from None
        if not rel:
            continue
        manifest[rel] = [obj.key, obj.etag, obj.size]
    digest = _digest("s3-prefix", endpoint, url.bucket, url.key, json.dumps(sorted(manifest.items())))
    meta = {"source": str(url), "kind": "s3-prefix", "endpoint": endpoint, "objects": manifest}
    name = url.key.rstrip("/").rsplit("/", 1)[-1] or url.bucket

    def build(tmp: Path) -> tuple[int, int]:
        previous = _previous_snapshot(cache, str(url), endpoint)
        todo, reused = [], 0
        for rel, (key, etag, size) in manifest.items():
            dest = tmp.joinpath(*rel.split("/"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            old = previous.get(rel)
            if old is not None and old[1:] == (etag, size) and _link_or_copy(old[0], dest):
                reused += 1
                continue
            todo.append((s3mod.ObjectInfo(key, size, etag), dest))
        total = sum(o.size for o, _ in todo)
        log.info(
            "downloading %d objects (%s) from %s%s",
            len(todo),
            _human(total),
            url,
            f", reusing {reused} unchanged from the previous snapshot" if reused else "",
        )
        received = _download_many(client, url.bucket, todo, policy, progress, total)
        return received, len(manifest)

    entry = _entry_name(name, digest)
    return _materialize(cache, entry, digest, str(url), "s3-prefix", meta, build)


def _download_many(client, bucket, todo, policy, progress, total) -> int:
    if not todo:
        return 0
    bar = s3mod.progress_bar(total, 0, f"s3://{bucket}/ ({len(todo)} files)", None)
    lock = threading.Lock()

    def on_chunk(n: int) -> None:
        with lock:
            if bar is not None:
                bar.update(n)
            if progress is not None:
                progress(n)

    try:
        with ThreadPoolExecutor(max_workers=min(DOWNLOAD_THREADS, len(todo))) as pool:
            futures = [
                pool.submit(
                    s3mod.download_object,
                    client,
                    bucket,
                    obj,
                    dest,
                    policy,
                    progress=on_chunk,
                    show_bar=False,
                )
                for obj, dest in todo
            ]
            received = 0
            for fut in futures:
                received += fut.result()  # the first DataError propagates; the pool finishes the others
            return received
    finally:
        if bar is not None:
            bar.close()


def _previous_snapshot(cache: Path, source: str, endpoint: str) -> dict[str, tuple[Path, str, int]]:
    """rel -> (file, etag, size) from the newest complete snapshot of the same prefix, if any."""
    best: tuple[float, Path, dict] | None = None
    for meta_path in (cache / "sources").glob(f"*/{META_NAME}"):
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            continue
        if (
            meta.get("source") != source
            or meta.get("endpoint") != endpoint
            or meta.get("kind") != "s3-prefix"
        ):
            continue
        created = float(meta.get("created", 0))
        if best is None or created > best[0]:
            best = (created, meta_path.parent, meta)
    if best is None:
        return {}
    base = best[1]
    return {
        rel: (base.joinpath(*rel.split("/")), etag, size)
        for rel, (_key, etag, size) in best[2].get("objects", {}).items()
    }


def _link_or_copy(src: Path, dest: Path) -> bool:
    try:
        os.link(src, dest)
        return True
    except OSError:
        pass
    try:
        shutil.copyfile(src, dest)
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------------------------- cache


def _materialize(
    cache: Path,
    name: str,
    digest: str,
    label: str,
    kind: str,
    meta: dict[str, Any],
    build: Callable[[Path], tuple[int, int]],
    *,
    unwrap: str | None = None,
) -> ResolvedSource:
    """The cache entry `sources/<name>`, built by `build(tmp_folder) -> (bytes, files)` if missing.
    `unwrap`: an archive's name without suffix; when all its content is in one folder of that name, the
    source resolves to that folder."""
    sources = cache / "sources"
    entry = sources / name
    if (entry / META_NAME).is_file():
        cachemod.hold(cache, entry)  # in use from now on: never evicted under us
        if (entry / META_NAME).is_file():  # still there once held (not evicted meanwhile)
            return _hit(entry, label, kind)
    try:
        sources.mkdir(parents=True, exist_ok=True)
        with _locked(cache, digest, label):
            if (entry / META_NAME).is_file():  # another process built it while we waited
                cachemod.hold(cache, entry)
                return _hit(entry, label, kind)
            for stale in sources.glob(name + ".tmp-*"):  # a crashed holder's leftovers
                remove_tree(stale)
            if entry.exists():  # no metadata: not ours or damaged; rebuild
                remove_tree(entry)
            tmp = Path(tempfile.mkdtemp(prefix=name + ".tmp-", dir=sources))
            try:
                received, files = build(tmp)
                root = _content_root(tmp, unwrap) if unwrap else ""
                size = cachemod.tree_bytes(tmp)
                meta = {**meta, "root": root, "created": time.time(), "files": files, "bytes": size}
                _write_json_atomic(tmp / META_NAME, meta)
                cachemod.hold(cache, entry)  # held before it appears, so no evictor can take it first
                os.rename(tmp, entry)
            except BaseException:
                remove_tree(tmp)
                raise
        cachemod.enforce_cap(cache)
    except OSError as e:  # the cache's file system: permissions, free space
        where = f" ({e.filename})" if e.filename else ""
        raise DataError(
            f"{label}: cannot prepare it in the data cache {cache}: {e.strerror or e}{where}; check free space "
            f"and permissions there, or set {CACHE_ENV} to another folder"
        ) from None
    path = entry.joinpath(*root.split("/")) if root else entry
    _remember(entry, label)
    log.info("%s: ready in %s (%d files)", label, path, files)
    return ResolvedSource(label, path, kind, False, received, files)


def _hit(entry: Path, label: str, kind: str) -> ResolvedSource:
    try:
        root = json.loads((entry / META_NAME).read_text()).get("root", "")
    except (OSError, ValueError) as e:
        raise DataError(
            f"{label}: the cache entry {entry} is damaged ({e}); delete it and run again"
        ) from None
    _remember(entry, label)
    path = entry.joinpath(*root.split("/")) if root else entry
    log.debug("%s: cached in %s", label, path)
    return ResolvedSource(label, path, kind, True)


def _remember(entry: Path, label: str) -> None:
    with _LABELS_LOCK:
        _LABELS[os.path.abspath(entry)] = label


def _content_root(folder: Path, stem: str) -> str:
    """`stem` when the only visible entry of `folder` is a folder named `stem` (an `images_train.tar.gz`
    holding `images_train/`), else ''. Only the archive's own name unwraps, so a one-class archive `x.tar`
    holding `cat/` keeps `cat` as a class folder."""
    visible = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    if len(visible) == 1 and visible[0].name == stem and visible[0].is_dir() and not visible[0].is_symlink():
        return stem
    return ""


@contextmanager
def _locked(cache: Path, digest: str, label: str):
    from filelock import FileLock, Timeout

    locks = cache / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(locks / f"{digest[:32]}.lock"))
    try:
        lock.acquire(timeout=0.5)
    except Timeout:
        log.info("%s: waiting for another process that is preparing it", label)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _write_json_atomic(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def _digest(*parts: object) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(str(part).encode("utf-8", "surrogateescape"))
        h.update(b"\x00")
    return h.hexdigest()


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:60] or "source"


def _entry_name(name: str, digest: str) -> str:
    return f"{_slug(name)}-{digest[:16]}"


def _human(n: float) -> str:
    if n < 1024:
        return f"{int(n)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 1024 or unit == "TiB":
            break
    return f"{n:.1f} {unit}"

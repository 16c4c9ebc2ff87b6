"""The shared data cache's housekeeping: entries in use, a size cap with LRU eviction, list and clear.

An entry is a folder `<cache>/sources/<name>-<digest>/` built by `mae.data.sources` (with its metadata file
`.mae-source.json`). This module adds:

- **In use.** A process that resolves a source holds a shared OS lock (flock) on `locks/<entry>.use` until
  it exits (DataLoader workers and DDP ranks hold it too, through the inherited or their own descriptor).
  Eviction and `clear` take that lock exclusively without waiting, so an entry some process reads is never
  removed; a dead process holds nothing. Without flock (not POSIX) nothing is evicted automatically.
- **Recency.** Every use touches the metadata file; its modification time is the entry's last use.
- **Size cap.** `MAE_CACHE_MAX_GB` (GB = 10^9 bytes): after an entry is built, the least recently used
  entries not in use are removed until the cache fits (one warning line when entries in use keep it above).
- **List and clear.** `mae cache list` and `mae cache clear [NAME ...]` (`list_entries`, `clear`).

Removal is a rename under the exclusive lock (`sources/<name>` -> `sources/.evicted-<name>-<pid>`) followed
by deleting the renamed folder, so a reader sees a complete entry or none. A process that found an entry and
then waited for its lock re-checks that it is still there (see `sources._materialize`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mae.data.extract import remove_tree
from mae.errors import ConfigError

try:  # flock is POSIX; elsewhere nothing is known to be in use, so nothing is evicted automatically
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("mae.data")

META_NAME = ".mae-source.json"  # inside each cache entry; hidden, so datasets never read it
CAP_ENV = "MAE_CACHE_MAX_GB"
_HELD: dict[str, IO] = {}  # use-lock path -> open file holding the shared lock (for the process' lifetime)


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    source: str  # as the user wrote it
    kind: str
    bytes: int
    last_used: float  # seconds since the epoch
    in_use: bool


def _use_lock(cache: Path, name: str) -> Path:
    return cache / "locks" / f"{name}.use"


def hold(cache: Path, entry: Path) -> None:
    """Mark `entry` in use by this process (a shared lock, released when the process exits) and as just used.
    Blocks while another process is removing it; the caller then checks it still exists."""
    path = _use_lock(cache, entry.name)
    key = str(path)
    if key not in _HELD and fcntl is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+b")  # noqa: SIM115 - held open on purpose until the process exits
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        _HELD[key] = f
    try:
        os.utime(_meta_path(entry))
    except OSError:  # another user's entry, or gone: recency is best effort
        pass


STORE_META = "store.json"  # a decoded image store's metadata (mae.data.store)


def _meta_path(entry: Path) -> Path:
    """The metadata file of an entry: a prepared source's, or a decoded store's."""
    return entry / STORE_META if entry.parent.name == "stores" else entry / META_NAME


def _try_exclusive(cache: Path, name: str) -> IO | None:
    """The entry's use lock taken exclusively, or None when some process (this one included) uses it."""
    if fcntl is None:
        return None
    path = _use_lock(cache, name)
    if str(path) in _HELD:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a+b")  # noqa: SIM115 - closed by the caller
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _in_use(cache: Path, name: str) -> bool:
    f = _try_exclusive(cache, name)
    if f is None:
        return fcntl is not None
    f.close()
    return False


def tree_bytes(root: Path) -> int:
    """Bytes of the regular files below `root` (links not followed)."""
    total = 0
    stack = [str(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        total += e.stat(follow_symlinks=False).st_size
        except OSError:
            continue
    return total


def list_entries(cache: Path) -> list[Entry]:
    """Every complete entry of the cache (prepared sources and decoded image stores), least recently used
    first."""
    out = []
    for kind_dir in ("sources", "stores"):
        folder = cache / kind_dir
        if not folder.is_dir():
            continue
        for d in folder.iterdir():
            meta_path = _meta_path(d)
            if d.name.startswith(".") or ".tmp-" in d.name or not meta_path.is_file():
                continue
            try:
                meta = json.loads(meta_path.read_text())
                used = meta_path.stat().st_mtime
            except (OSError, ValueError):
                continue
            size = meta.get("bytes")
            if kind_dir == "stores":
                files = meta.get("files") or []
                source = os.path.commonpath(files) if files else "?"
                kind = f"decoded store ({meta.get('short_side')} px)"
                size = tree_bytes(d)
            else:
                source, kind = str(meta.get("source", "?")), str(meta.get("kind", "?"))
            out.append(
                Entry(
                    name=d.name,
                    path=d,
                    source=source,
                    kind=kind,
                    bytes=int(size) if isinstance(size, int) else tree_bytes(d),
                    last_used=used,
                    in_use=_in_use(cache, d.name),
                )
            )
    out.sort(key=lambda e: e.last_used)
    return out


def remove(cache: Path, entry: Entry) -> bool:
    """Remove `entry` unless a process uses it; True when removed."""
    lock = _try_exclusive(cache, entry.name)
    if lock is None:
        return False
    try:
        if not entry.path.exists():
            return False
        doomed = entry.path.with_name(f".evicted-{entry.name}-{os.getpid()}")
        os.rename(entry.path, doomed)
    finally:
        lock.close()
    remove_tree(doomed)
    return True


def cap_bytes() -> int | None:
    """MAE_CACHE_MAX_GB in bytes, or None when unset (no cap)."""
    raw = os.environ.get(CAP_ENV)
    if not raw:
        return None
    try:
        gb = float(raw)
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise ConfigError(f"{CAP_ENV}={raw!r}: expected a number of GB >= 0, e.g. 200")
    return int(gb * 1e9)


def enforce_cap(cache: Path) -> list[Entry]:
    """Evict least recently used entries not in use until the cache fits MAE_CACHE_MAX_GB; returns those
    removed. One warning line when entries in use keep the cache above the cap."""
    cap = cap_bytes()
    if cap is None or fcntl is None:
        return []
    entries = list_entries(cache)
    total = sum(e.bytes for e in entries)
    removed = []
    for e in entries:
        if total <= cap:
            break
        if not e.in_use and remove(cache, e):
            removed.append(e)
            total -= e.bytes
    if removed:
        log.info(
            "data cache %s: removed %d least recently used entr%s (%s) to stay under %s=%s",
            cache,
            len(removed),
            "y" if len(removed) == 1 else "ies",
            human(sum(e.bytes for e in removed)),
            CAP_ENV,
            os.environ.get(CAP_ENV),
        )
    if total > cap:
        log.warning(
            "data cache %s holds %s, above %s=%s: the rest is in use by running processes and was kept",
            cache,
            human(total),
            CAP_ENV,
            os.environ.get(CAP_ENV),
        )
    return removed


def clear(cache: Path, names: list[str] | None = None) -> tuple[list[Entry], list[Entry], list[str]]:
    """Remove the entries named (entry folder names or sources as written; None: all). Returns (removed,
    kept because in use, names that match nothing). Leftovers of interrupted builds go too."""
    entries = list_entries(cache)
    if names is None:
        chosen, unknown = entries, []
    else:
        chosen = [e for e in entries if e.name in names or e.source in names]
        unknown = [n for n in names if not any(n in (e.name, e.source) for e in entries)]
    removed, kept = [], []
    for e in chosen:
        (removed if remove(cache, e) else kept).append(e)
    if names is None:
        _remove_leftovers(cache)
    return removed, kept, unknown


def _remove_leftovers(cache: Path) -> None:
    """Folders of evictions and builds that a crash interrupted (older than an hour: none is running)."""
    sources = cache / "sources"
    if not sources.is_dir():
        return
    for d in sources.iterdir():
        if d.name.startswith(".evicted-") or ".tmp-" in d.name:
            try:
                if time.time() - d.stat().st_mtime > 3600:
                    remove_tree(d)
            except OSError:
                pass


def human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover

"""Safe extraction of tar archives (.tar, .tar.gz/.tgz, .tar.bz2, .tar.xz).

An archive is untrusted input. Each member is checked before anything is written, and the whole archive is
refused (DataError naming the member) if any member

- has an absolute name (`/etc/passwd`, `C:/x`) or a `..` component anywhere in its name,
- is a symbolic link whose target is absolute or resolves outside the target folder,
- is a hard link to a name outside the target folder or to something that is not an extracted file,
- is a character/block device or a FIFO (or any other special type),
- would be written through a link that leads outside the target (checked with the real, resolved path at
  the moment of writing, so links created by earlier members cannot redirect later ones).

Files are created with O_NOFOLLOW|O_EXCL (an existing name is unlinked first, never written through) and mode
0644; ownership and special permission bits from the archive are ignored. After the last member, every
symlink in the tree is resolved once more: a chain of links that only escapes once all of them exist is
refused as well. Python's own `tarfile.data_filter` (3.11.4+/3.10.12+) runs on each member as a second
line of defence.

The caller extracts into a fresh private folder and deletes it on failure, so a refused archive leaves
nothing behind, inside the target or outside it.

Size: before anything is written, one pass over the members' headers sums the sizes of the files the archive
would write; an archive that would expand past the limit is refused in one line (a "zip bomb" writes
nothing). The limit is `MAE_MAX_EXTRACT_GB` (GB = 10^9 bytes) when set, else the target file system's free
space less a margin (5% of its size, at most 1 GiB), so an extraction never fills the disk. For a compressed
archive that pass decompresses it once more; an uncompressed .tar is only seeked through.
"""

from __future__ import annotations

import lzma
import os
import shutil
import stat
import tarfile
import zlib

from mae.errors import ConfigError, DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_COPY_BYTES = 1 << 20
MAX_EXTRACT_ENV = "MAE_MAX_EXTRACT_GB"
_MARGIN_BYTES = 1 << 30  # free space an extraction leaves at least (or 5% of a smaller file system)
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bzip2"), (b"\xfd7zXZ\x00", "xz"))
_TAR_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError)


def is_archive_name(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def archive_stem(name: str) -> str:
    """'images_train.tar.gz' -> 'images_train'."""
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


class UnsafeMember(Exception):
    """A member (or object key) that must not be written; the message says why."""


def safe_relpath(name: str) -> str:
    """`name` as a normalised relative path ('a/b.jpg'; '' for the root itself), or UnsafeMember."""
    if "\x00" in name:
        raise UnsafeMember("contains a NUL byte")
    unified = name.replace("\\", "/")
    if unified.startswith("/") or (len(unified) > 1 and unified[1] == ":" and unified[0].isalpha()):
        raise UnsafeMember("has an absolute path")
    parts = [p for p in unified.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeMember("has a '..' path component (path traversal)")
    return "/".join(parts)


def safe_extract(archive: str | os.PathLike, target: str | os.PathLike, *, label: str | None = None) -> int:
    """Extract `archive` into the existing folder `target`; returns the number of regular files written.

    Raises DataError (naming the archive and the offending member) for an unsafe or unreadable archive; the
    caller removes `target` then. `label` is how the archive is named in messages (e.g. its s3:// URL).
    """
    label = label or str(archive)
    root = os.path.realpath(target)
    check_room(expanded_size(archive, label), root, label)
    n_files = 0
    try:
        with tarfile.open(archive, "r:*") as tf:
            # next() instead of iteration, clearing the member list as we go: an archive with millions of
            # images would otherwise keep every header in memory
            while (member := tf.next()) is not None:
                try:
                    n_files += _extract_member(tf, member, root)
                except UnsafeMember as why:
                    raise DataError(
                        f"{label}: refused unsafe archive member {member.name!r}: {why}; nothing was extracted"
                    ) from None
                tf.members.clear()
    except _TAR_ERRORS as e:
        raise DataError(unreadable(archive, label, e)) from None
    except OSError as e:
        if e.errno is None:  # gzip/bz2 "not a gzipped file", "invalid data stream"
            raise DataError(unreadable(archive, label, e)) from None
        raise DataError(f"{label}: cannot extract into {target}: {e.strerror} ({e.filename or ''})") from None
    _check_links(root, label)
    return n_files


def unreadable(archive: str | os.PathLike, label: str, e: BaseException) -> str:
    """One line for an archive tarfile cannot read: what the file is instead (tarfile's own message lists
    every decompressor it tried, one line each)."""
    try:
        with open(archive, "rb") as f:
            head = f.read(512)
    except OSError as oe:
        return f"{label}: cannot be read ({oe.strerror})"
    kind = next((name for magic, name in _MAGIC if head.startswith(magic)), None)
    if kind is None:
        what = "neither a tar archive nor gzip, bzip2 or xz compressed" if head else "an empty file"
    elif isinstance(e, EOFError) or "truncated" in str(e).lower() or "end of" in str(e).lower():
        what = f"{kind} compressed, but truncated or not a tar archive inside"
    else:
        what = f"{kind} compressed, but its content is not a tar archive"
    return (
        f"{label}: not a readable tar archive ({what}); give a .tar, .tar.gz, .tar.bz2 or .tar.xz of images"
    )


def expanded_size(archive: str | os.PathLike, label: str) -> int:
    """The bytes the archive's regular files would take once extracted, from their headers alone."""
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tf:
            while (member := tf.next()) is not None:
                if member.isreg():
                    total += member.size
                tf.members.clear()
    except _TAR_ERRORS as e:
        raise DataError(unreadable(archive, label, e)) from None
    except OSError as e:
        if e.errno is None:
            raise DataError(unreadable(archive, label, e)) from None
        raise DataError(f"{label}: cannot be read ({e.strerror})") from None
    return total


def extract_limit(target: str | os.PathLike) -> tuple[int, str]:
    """(bytes an extraction into `target` may write, where that limit comes from, for messages)."""
    raw = os.environ.get(MAX_EXTRACT_ENV)
    if raw:
        try:
            gb = float(raw)
        except ValueError:
            gb = -1.0
        if not gb > 0:
            raise ConfigError(f"{MAX_EXTRACT_ENV}={raw!r}: expected a number of GB > 0, e.g. 500")
        return int(gb * 1e9), f"{MAX_EXTRACT_ENV}={raw}"
    usage = shutil.disk_usage(target)
    margin = min(_MARGIN_BYTES, usage.total // 20)
    return max(0, usage.free - margin), f"the {_gb(usage.free)} free in {target} less a {_gb(margin)} margin"


def check_room(size: int, target: str | os.PathLike, label: str) -> None:
    """DataError (one line) when `size` bytes would not fit within extract_limit(target)."""
    limit, why = extract_limit(target)
    if size > limit:
        raise DataError(
            f"{label}: its files would expand to {_gb(size)}, more than {why}; free space, point MAE_CACHE_DIR "
            f"at a larger disk or raise {MAX_EXTRACT_ENV}; nothing was extracted"
        )


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _extract_member(tf: tarfile.TarFile, member: tarfile.TarInfo, root: str) -> int:
    rel = safe_relpath(member.name)
    if not rel:  # "." or "./": the archive's own root
        if member.isdir():
            return 0
        raise UnsafeMember("has an empty name")
    if member.ischr() or member.isblk():
        raise UnsafeMember("is a device file")
    if member.isfifo():
        raise UnsafeMember("is a FIFO")
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise UnsafeMember(f"has an unsupported type {member.type!r}")

    dest = os.path.join(root, *rel.split("/"))
    parent = os.path.dirname(dest)
    if not _within(os.path.realpath(parent), root):
        raise UnsafeMember("would be written through a link that leads outside the target folder")

    # links: validated before anything is written
    link = src = ""
    if member.issym():
        link = member.linkname.replace("\\", "/")
        if not link or link.startswith("/") or (len(link) > 1 and link[1] == ":"):
            raise UnsafeMember(f"is a symbolic link to the absolute path {member.linkname!r}")
        if not _within(os.path.realpath(os.path.join(parent, *link.split("/"))), root):
            raise UnsafeMember(f"is a symbolic link to {member.linkname!r}, outside the target folder")
    elif member.islnk():
        try:
            src_rel = safe_relpath(member.linkname)
        except UnsafeMember as why:
            raise UnsafeMember(f"is a hard link to {member.linkname!r}, which {why}") from None
        src = os.path.realpath(os.path.join(root, *src_rel.split("/")))
        if not _within(src, root):
            raise UnsafeMember(f"is a hard link to {member.linkname!r}, outside the target folder")
        if not os.path.isfile(src):
            raise UnsafeMember(f"is a hard link to {member.linkname!r}, which is not an extracted file")

    # Python's own filter (3.10.12+/3.11.4+) as a second opinion
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:
        try:
            data_filter(member, root)
        except tarfile.FilterError as e:
            raise UnsafeMember(str(e)) from None

    os.makedirs(parent, exist_ok=True)
    if not _within(os.path.realpath(parent), root):
        raise UnsafeMember("would be written through a link that leads outside the target folder")

    if member.isdir():
        if os.path.islink(dest) or (os.path.lexists(dest) and not os.path.isdir(dest)):
            os.unlink(dest)
        os.makedirs(dest, exist_ok=True)
        return 0
    if member.issym():
        _remove_existing(dest)
        os.symlink(link, dest)
        return 0
    if member.islnk():
        _remove_existing(dest)
        try:
            os.link(src, dest, follow_symlinks=False)
        except OSError:
            shutil.copyfile(src, dest)
        return 1

    # a regular file
    _remove_existing(dest)
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    with os.fdopen(fd, "wb") as out:
        src_f = tf.extractfile(member)
        if src_f is not None:
            shutil.copyfileobj(src_f, out, _COPY_BYTES)
    if member.mtime:
        os.utime(dest, (member.mtime, member.mtime), follow_symlinks=False)
    return 1


def _remove_existing(dest: str) -> None:
    """A later member replaces an earlier one of the same name (tar semantics), but never through a link."""
    if os.path.islink(dest) or (os.path.lexists(dest) and not os.path.isdir(dest)):
        os.unlink(dest)
    elif os.path.isdir(dest):
        raise UnsafeMember("replaces a directory extracted earlier")


def _check_links(root: str, label: str) -> None:
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if os.path.islink(path) and not _within(os.path.realpath(path), root):
                rel = os.path.relpath(path, root)
                raise DataError(
                    f"{label}: refused unsafe archive member {rel!r}: its symbolic link resolves outside the "
                    "target folder once all links are extracted; nothing was extracted"
                )
        for name in filenames:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):  # pragma: no cover - refused at extraction
                raise DataError(f"{label}: refused special file {os.path.relpath(path, root)!r}")


def remove_tree(path: str | os.PathLike) -> None:
    """rmtree that does not follow links (a link to outside is removed, not what it points to)."""
    shutil.rmtree(path, ignore_errors=True)

"""Local sources: folders, archives, the content-keyed cache and its safety under concurrent processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import mae.data.sources as sources
from mae.data import resolve_source, resolve_source_info
from mae.errors import DataError
from tests.data_fixtures import files_under, make_class_tree, make_tar, write_image

REPO = Path(__file__).resolve().parent.parent


def _visible_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


def test_folder_is_used_in_place(tmp_path):
    make_class_tree(tmp_path / "imgs", {"a": 1})
    info = resolve_source_info(tmp_path / "imgs", cache_dir=tmp_path / "cache")
    assert info.path == (tmp_path / "imgs").resolve()
    assert info.kind == "folder" and info.from_cache
    assert not (tmp_path / "cache").exists()  # nothing copied


def test_missing_and_unsupported_sources_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match=r"data source not found: .*nope"):
        resolve_source(tmp_path / "nope", cache_dir=tmp_path / "c")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"notes\.txt: a file that is not a \.tar"):
        resolve_source(tmp_path / "notes.txt", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match=r"gs:// scheme is not supported"):
        resolve_source("gs://bucket/x.tar.gz", cache_dir=tmp_path / "c")
    with pytest.raises(DataError, match="expected a folder"):
        resolve_source("  ", cache_dir=tmp_path / "c")


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".tgz"])
def test_archive_is_extracted_once_and_reused(tmp_path, monkeypatch, suffix):
    tree = make_class_tree(tmp_path / "images_train", {"cat": 2, "dog": 3})
    archive = make_tar(tmp_path / f"images_train{suffix}", tree)
    cache = tmp_path / "cache"

    first = resolve_source_info(archive, cache_dir=cache)
    assert not first.from_cache and first.files_written == 5 and first.kind == "archive"
    # the archive wraps everything in images_train/: the source resolves to that folder
    assert first.path.name == "images_train"
    assert files_under(first.path) == files_under(tree)

    def no_extraction(*a, **k):
        raise AssertionError("extracted a second time")

    monkeypatch.setattr(sources, "safe_extract", no_extraction)
    second = resolve_source_info(archive, cache_dir=cache)
    assert second.from_cache and second.path == first.path


def test_changed_archive_gets_a_new_cache_entry(tmp_path):
    tree = make_class_tree(tmp_path / "src", {"cat": 1})
    archive = make_tar(tmp_path / "data.tar", tree, arcname=".")
    cache = tmp_path / "cache"
    first = resolve_source(archive, cache_dir=cache)
    # one folder "cat" not named like the archive: a class folder, not a wrapper, so the root is kept
    assert _visible_names(first) == ["cat"]

    write_image(tree / "dog" / "0.jpg")
    make_tar(archive, tree, arcname=".")
    os.utime(archive, ns=(time.time_ns(), time.time_ns() + 10**9))  # a new mtime even on coarse clocks
    second = resolve_source(archive, cache_dir=cache)
    assert second != first
    assert _visible_names(second) == ["cat", "dog"]


def test_cache_dir_defaults_to_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MAE_CACHE_DIR", str(tmp_path / "envcache"))
    archive = make_tar(tmp_path / "x.tar", make_class_tree(tmp_path / "x", {"a": 1}))
    assert str(resolve_source(archive)).startswith(str(tmp_path / "envcache"))


def test_leftovers_of_a_crashed_process_are_cleaned(tmp_path):
    archive = make_tar(tmp_path / "x.tar", make_class_tree(tmp_path / "x", {"a": 2}))
    cache = tmp_path / "cache"
    path = resolve_source(archive, cache_dir=cache)
    entry = path.parent  # the cache entry (path is its single top-level folder)
    # simulate a crash: the entry never got renamed into place, a half-written temp folder remains
    os.rename(entry, entry.with_name(entry.name + ".tmp-crashed"))
    again = resolve_source_info(archive, cache_dir=cache)
    assert not again.from_cache and again.path == path
    assert not entry.with_name(entry.name + ".tmp-crashed").exists()
    assert len(list((path).rglob("*.jpg"))) == 2


def test_damaged_entry_without_metadata_is_rebuilt(tmp_path):
    archive = make_tar(tmp_path / "x.tar", make_class_tree(tmp_path / "x", {"a": 2}))
    cache = tmp_path / "cache"
    path = resolve_source(archive, cache_dir=cache)
    (path.parent / sources.META_NAME).unlink()
    info = resolve_source_info(archive, cache_dir=cache)
    assert not info.from_cache and len(list(info.path.rglob("*.jpg"))) == 2


_WORKER = r"""
import json, os, sys, time
from pathlib import Path
go = Path(sys.argv[3])
while not go.exists():
    time.sleep(0.005)
from mae.data import resolve_source_info
info = resolve_source_info(sys.argv[1], cache_dir=sys.argv[2])
n = sum(1 for _ in info.path.rglob("*.jpg"))
print(json.dumps({"path": str(info.path), "from_cache": info.from_cache, "n": n}))
"""


def test_parallel_processes_share_one_cache_safely(tmp_path):
    """Four processes resolve the same archive at the same moment: one extracts, the others wait for it and
    reuse it; every one sees the complete folder."""
    tree = make_class_tree(tmp_path / "images_train", {f"c{i}": 40 for i in range(8)}, size=(64, 64))
    archive = make_tar(tmp_path / "images_train.tar.gz", tree)
    cache, go = tmp_path / "cache", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(archive), str(cache), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(4)
    ]
    time.sleep(1.0)  # let them import and wait at the barrier
    go.touch()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert len({r["path"] for r in results}) == 1
    assert all(r["n"] == 320 for r in results)
    assert sorted(r["from_cache"] for r in results) == [False, True, True, True]
    entries = list((cache / "sources").iterdir())
    assert len(entries) == 1 and ".tmp-" not in entries[0].name
    meta = json.loads((entries[0] / sources.META_NAME).read_text())
    assert meta["files"] == 320 and meta["kind"] == "archive"


def test_unusable_cache_folder_is_a_clear_error(tmp_path):
    archive = make_tar(tmp_path / "x.tar", make_class_tree(tmp_path / "x", {"a": 1}))
    not_a_folder = tmp_path / "cache-is-a-file"
    not_a_folder.write_text("")
    with pytest.raises(DataError, match=r"x\.tar: cannot prepare it in the data cache .*set MAE_CACHE_DIR"):
        resolve_source(archive, cache_dir=not_a_folder)

"""Extraction limits and the data cache's size cap: an archive that would expand past the limit writes nothing;
MAE_CACHE_MAX_GB evicts the least recently used entries that no process uses; `mae cache list|clear`."""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import tarfile
import time
from collections import namedtuple
from pathlib import Path

import pytest

from mae.cli import main as mae_main
from mae.data import cache as C
from mae.data import extract as E
from mae.data.sources import resolve_source, resolve_source_info
from mae.errors import ConfigError, DataError
from tests.conftest import REPO
from tests.data_fixtures import make_class_tree, make_tar


class _Zeros(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        b[:] = bytes(len(b))
        return len(b)


def zip_bomb(path: Path, member_bytes: int = 20_000_000) -> Path:
    """A .tar.gz of a few hundred KB whose one file expands to `member_bytes` of zeros."""
    with tarfile.open(path, "w:gz", compresslevel=1) as tf:
        info = tarfile.TarInfo("images/zeros.png")
        info.size = member_bytes
        tf.addfile(info, io.BufferedReader(_Zeros()))
    return path


def everything_under(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix != ".lock")


# ------------------------------------------------------------------------------------- extraction limit


def test_zip_bomb_is_refused_before_anything_is_written(tmp_path, monkeypatch, capsys):
    archive = zip_bomb(tmp_path / "images_train.tar.gz")
    assert archive.stat().st_size < 200_000
    cache = tmp_path / "cache"
    monkeypatch.setenv("MAE_CACHE_DIR", str(cache))
    monkeypatch.setenv("MAE_MAX_EXTRACT_GB", "0.01")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"results_dir: {tmp_path / 'results'}\n")
    written: list[str] = []
    real = E._extract_member
    monkeypatch.setattr(E, "_extract_member", lambda tf, m, root: written.append(m.name) or real(tf, m, root))
    assert mae_main(["train", "-e", str(spec), f"dataset.train_data_sources={archive}"]) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert err == [
        f"mae: error: {archive}: its files would expand to 20.0 MB, more than MAE_MAX_EXTRACT_GB=0.01; free "
        "space, point MAE_CACHE_DIR at a larger disk or raise MAE_MAX_EXTRACT_GB; nothing was extracted"
    ]
    assert written == []  # not one member was written
    assert everything_under(cache) == [] and list((cache / "sources").iterdir()) == []


def test_limit_is_free_space_less_a_margin(tmp_path, monkeypatch):
    monkeypatch.delenv("MAE_MAX_EXTRACT_GB", raising=False)
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(E.shutil, "disk_usage", lambda p: usage(100_000_000, 80_000_000, 25_000_000))
    limit, why = E.extract_limit(tmp_path)
    assert limit == 20_000_000  # 25 MB free less 5% of a 100 MB disk
    assert why == f"the 25.0 MB free in {tmp_path} less a 5.0 MB margin"
    archive = zip_bomb(tmp_path / "big.tar.gz", member_bytes=21_000_000)
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(
        DataError, match=r"would expand to 21.0 MB, more than the 25.0 MB free in .* 5.0 MB margin"
    ):
        E.safe_extract(archive, target)
    assert list(target.iterdir()) == []
    # a disk with room: a terabyte free leaves a 1 GiB margin, and the archive extracts
    monkeypatch.setattr(E.shutil, "disk_usage", lambda p: usage(2 * 10**12, 10**12, 10**12))
    assert E.extract_limit(tmp_path)[0] == 10**12 - 2**30
    assert E.safe_extract(archive, target) == 1


def test_bad_limit_setting(monkeypatch, tmp_path):
    monkeypatch.setenv("MAE_MAX_EXTRACT_GB", "lots")
    with pytest.raises(ConfigError, match="MAE_MAX_EXTRACT_GB='lots': expected a number of GB > 0"):
        E.extract_limit(tmp_path)
    monkeypatch.setenv("MAE_CACHE_MAX_GB", "-1")
    with pytest.raises(ConfigError, match="MAE_CACHE_MAX_GB='-1'"):
        C.cap_bytes()


# ---------------------------------------------------------------------------------------- the cache cap


def archives(tmp_path: Path, n: int) -> list[Path]:
    out = []
    for i in range(n):
        tree = make_class_tree(tmp_path / f"src{i}" / f"set{i}", {"a": 2 + i}, size=(64, 48))
        out.append(make_tar(tmp_path / f"set{i}.tar", tree))
    return out


def prepare_elsewhere(cache: Path, *sources: Path) -> None:
    """Prepare sources in another process, which then exits (so nothing holds them)."""
    code = "import sys; from mae.data.sources import resolve_source\nfor s in sys.argv[2:]: resolve_source(s, cache_dir=sys.argv[1])"
    subprocess.run([sys.executable, "-c", code, str(cache), *map(str, sources)], check=True, cwd=REPO)


def entry_of(cache: Path, source: Path) -> C.Entry:
    return next(e for e in C.list_entries(cache) if e.source == str(source))


def age(cache: Path, source: Path, seconds_ago: float) -> None:
    os.utime(entry_of(cache, source).path / C.META_NAME, (time.time() - seconds_ago,) * 2)


def test_cap_evicts_least_recently_used_entries(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="mae.data")  # the eviction notices are INFO lines
    cache = tmp_path / "cache"
    a, b, c = archives(tmp_path, 3)
    prepare_elsewhere(cache, a, b)
    age(cache, a, 300)  # b was used after a
    age(cache, b, 100)
    sizes = {s: entry_of(cache, s).bytes for s in (a, b)}
    c_bytes = sum(f.stat().st_size for f in (tmp_path / "src2").rglob("*") if f.is_file())
    assert sizes[a] > 0 and sizes[b] == sum(f.stat().st_size for f in (tmp_path / "src1").rglob("*.jpg"))
    # room for b and c, not a as well: a, the least recently used, goes
    monkeypatch.setenv("MAE_CACHE_MAX_GB", str((sizes[b] + c_bytes) / 1e9))
    info = resolve_source_info(c, cache_dir=cache)
    assert not info.from_cache and info.path.is_dir()
    assert sorted(e.source for e in C.list_entries(cache)) == [str(b), str(c)]
    assert "removed 1 least recently used entry" in caplog.text
    # evicted means rebuilt on the next use, not broken
    assert not resolve_source_info(a, cache_dir=cache).from_cache


def test_cap_never_evicts_an_entry_in_use(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="mae.data")  # the eviction notices are INFO lines
    cache = tmp_path / "cache"
    a, b = archives(tmp_path, 2)
    flag = tmp_path / "release"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time, os\nfrom mae.data.sources import resolve_source\n"
            "resolve_source(sys.argv[2], cache_dir=sys.argv[1]); print('held', flush=True)\n"
            "while not os.path.exists(sys.argv[3]): time.sleep(0.05)",
            str(cache),
            str(a),
            str(flag),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        age(cache, a, 1000)  # the oldest, yet in use by the holder
        assert entry_of(cache, a).in_use
        monkeypatch.setenv("MAE_CACHE_MAX_GB", "0")
        resolve_source(b, cache_dir=cache)
        assert sorted(e.source for e in C.list_entries(cache)) == [str(a), str(b)]  # nothing evictable
        assert "the rest is in use by running processes and was kept" in caplog.text
        assert not C.clear(cache, [str(a)])[0]  # clear keeps it too
    finally:
        flag.touch()
        holder.wait(timeout=30)
    assert not entry_of(cache, a).in_use  # the holder exited: released
    removed, kept, unknown = C.clear(cache, [str(a)])
    assert [e.source for e in removed] == [str(a)] and kept == [] and unknown == []


def test_cache_list_and_clear_commands(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    a, b = archives(tmp_path, 2)
    prepare_elsewhere(cache, a, b)
    monkeypatch.setenv("MAE_CACHE_DIR", str(cache))
    monkeypatch.delenv("MAE_CACHE_MAX_GB", raising=False)
    assert mae_main(["cache", "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{cache}: 2 entries, ") and out[0].endswith("no cap (set MAE_CACHE_MAX_GB)")
    assert len(out) == 3 and all(line.rstrip().endswith((str(a), str(b))) for line in out[1:])
    assert mae_main(["cache", "clear", "nothing-like-this"]) == 1
    captured = capsys.readouterr()
    assert captured.err.strip() == (
        "mae: warning: nothing-like-this: no such cache entry (see `mae cache list`)"
    )
    assert mae_main(["cache", "clear", str(a)]) == 0
    assert capsys.readouterr().out.startswith("removed 1 entry (")
    assert [e.source for e in C.list_entries(cache)] == [str(b)]
    assert mae_main(["cache", "--cache-dir", str(cache), "clear"]) == 0
    assert C.list_entries(cache) == []
    assert mae_main(["cache", "list"]) == 0
    assert (
        capsys.readouterr().out.splitlines()[-1] == f"{cache}: 0 entries, 0 B, no cap (set MAE_CACHE_MAX_GB)"
    )


def test_decoded_stores_count_against_the_cap(tmp_path, monkeypatch):
    # a store built by another process (which has exited) is listed as a cache entry and evicted by the cap;
    # one this process opened is held and stays
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 40, 0, 0)).save(folder / f"{i}.png")
    cache = tmp_path / "cache"
    code = (
        "import sys, glob; from mae.data.store import open_store; "
        "open_store(sorted(glob.glob(sys.argv[2] + '/*.png')), 16, label='t', cache_dir=sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", code, str(cache), str(folder)], check=True, cwd=REPO)
    (entry,) = C.list_entries(cache)
    assert entry.kind.startswith("decoded store") and entry.bytes > 0 and not entry.in_use
    assert entry.source == str(folder)
    monkeypatch.setenv("MAE_CACHE_MAX_GB", "0")
    assert [e.name for e in C.enforce_cap(cache)] == [entry.name]
    assert not entry.path.exists()
    from mae.data.store import open_store

    store = open_store(sorted(str(p) for p in folder.glob("*.png")), 16, label="t", cache_dir=cache)
    assert len(store) == 3 and store.folder.exists()  # rebuilt, held by this process: the cap kept it
    assert [e.in_use for e in C.list_entries(cache)] == [True]

"""Malicious archives are refused with the member named, and nothing is written outside the target."""

from __future__ import annotations

import tarfile

import pytest

from mae.data import resolve_source, safe_extract
from mae.errors import DataError
from tests.data_fixtures import files_under, image_bytes, member, tar_with_members

IMG = image_bytes()


@pytest.fixture
def sandbox(tmp_path):
    """sandbox/archives (inputs), sandbox/a/b/target (extraction target): a '../..' escape from the target
    still lands inside the sandbox, where the test can see it."""
    (tmp_path / "archives").mkdir()
    target = tmp_path / "a" / "b" / "target"
    target.mkdir(parents=True)
    return tmp_path


def _extract_refused(sandbox, members, match: str):
    archive = tar_with_members(sandbox / "archives" / "bad.tar", members)
    before = files_under(sandbox)
    with pytest.raises(DataError, match=match) as err:
        safe_extract(archive, sandbox / "a" / "b" / "target")
    written = files_under(sandbox) - before
    # whatever was written before the refusal is inside the target (the caller deletes it)
    assert all(p.startswith("a/b/target/") for p in written), written
    return str(err.value)


def test_traversal_member_is_refused_and_named(sandbox):
    msg = _extract_refused(
        sandbox,
        [(member("ok.jpg"), IMG), (member("../../escaped.txt"), b"evil")],
        r"'\.\./\.\./escaped\.txt'.*path traversal",
    )
    assert "bad.tar" in msg
    assert not (sandbox / "a" / "escaped.txt").exists()
    assert not (sandbox / "escaped.txt").exists()


def test_traversal_hidden_inside_a_path_is_refused(sandbox):
    _extract_refused(sandbox, [(member("x/../../../escaped.txt"), b"evil")], r"x/\.\./\.\./\.\./escaped\.txt")
    assert not (sandbox / "escaped.txt").exists()


def test_absolute_member_is_refused(sandbox):
    outside = sandbox / "absolute_evil.txt"
    _extract_refused(sandbox, [(member(str(outside)), b"evil")], "absolute path")
    assert not outside.exists()


def test_symlink_escape_is_refused_before_anything_is_written_through_it(sandbox):
    (sandbox / "outside").mkdir()
    members = [
        (member("link", tarfile.SYMTYPE, "../../../outside"), None),
        (member("link/evil.txt"), b"evil"),
    ]
    _extract_refused(sandbox, members, r"'link'.*symbolic link to '\.\./\.\./\.\./outside', outside")
    assert list((sandbox / "outside").iterdir()) == []


def test_symlink_to_absolute_path_is_refused(sandbox):
    _extract_refused(sandbox, [(member("etc", tarfile.SYMTYPE, "/etc"), None)], "'etc'.*absolute path '/etc'")


def test_chained_symlinks_that_escape_only_together_are_refused(sandbox):
    # l2 -> l1/.. is harmless while l1 does not exist; once l1 -> . exists, l2 points above the target
    members = [
        (member("l2", tarfile.SYMTYPE, "l1/.."), None),
        (member("l1", tarfile.SYMTYPE, "."), None),
    ]
    _extract_refused(sandbox, members, r"'l2'.*resolves outside")


def test_hardlink_outside_is_refused(sandbox):
    secret = sandbox / "secret.txt"
    secret.write_text("secret")
    _extract_refused(
        sandbox, [(member("hard", tarfile.LNKTYPE, "../../../secret.txt"), None)], r"'hard'.*hard link"
    )
    _extract_refused(sandbox, [(member("hard2", tarfile.LNKTYPE, str(secret)), None)], r"'hard2'.*hard link")
    assert secret.read_text() == "secret"


@pytest.mark.parametrize(
    "kind,what", [(tarfile.CHRTYPE, "device"), (tarfile.BLKTYPE, "device"), (tarfile.FIFOTYPE, "FIFO")]
)
def test_device_files_and_fifos_are_refused(sandbox, kind, what):
    _extract_refused(sandbox, [(member("dev/null0", kind), None)], rf"'dev/null0'.*{what}")


def test_members_replacing_links_never_write_through_them(sandbox):
    # f -> g (inside), then a regular file f: it replaces the link; g is never created
    archive = tar_with_members(
        sandbox / "archives" / "replace.tar",
        [(member("f", tarfile.SYMTYPE, "g"), None), (member("f"), b"data")],
    )
    target = sandbox / "a" / "b" / "target"
    safe_extract(archive, target)
    assert (target / "f").read_bytes() == b"data"
    assert not (target / "f").is_symlink()
    assert not (target / "g").exists()


def test_benign_links_inside_the_archive_are_kept(sandbox):
    archive = tar_with_members(
        sandbox / "archives" / "good.tar.gz",
        [
            (member("imgs", tarfile.DIRTYPE), None),
            (member("imgs/a.jpg"), IMG),
            (member("imgs/b.jpg", tarfile.SYMTYPE, "a.jpg"), None),
            (member("imgs/c.jpg", tarfile.LNKTYPE, "imgs/a.jpg"), None),
            (member("alias", tarfile.SYMTYPE, "imgs"), None),
        ],
    )
    target = sandbox / "a" / "b" / "target"
    assert safe_extract(archive, target) == 2  # a.jpg and the hard link c.jpg
    assert (target / "imgs" / "b.jpg").read_bytes() == IMG
    assert (target / "imgs" / "c.jpg").read_bytes() == IMG
    assert (target / "alias" / "a.jpg").read_bytes() == IMG


def test_resolve_source_refuses_and_leaves_no_cache_entry(sandbox, tmp_path):
    archive = tar_with_members(
        sandbox / "archives" / "images_train.tar.gz",
        [(member("images_train/ok.jpg"), IMG), (member("../../../../escaped.jpg"), IMG)],
    )
    cache = tmp_path / "cache"
    with pytest.raises(DataError, match=r"images_train\.tar\.gz: refused unsafe archive member '\.\./"):
        resolve_source(archive, cache_dir=cache)
    assert [p.name for p in (cache / "sources").iterdir()] == []  # the partial extraction is gone
    assert not any(p.name == "escaped.jpg" for p in tmp_path.rglob("*"))


def test_unreadable_archive_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + b"not really gzip" * 10)
    with pytest.raises(DataError, match=r"broken\.tar\.gz: not a readable tar archive"):
        resolve_source(bad, cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "sources").iterdir()) == []

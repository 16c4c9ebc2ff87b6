"""s3:// sources against a real S3 server (SeaweedFS on 127.0.0.1): archives, prefixes, the cache, errors,
retries, and a server that dies in the middle of a download."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time

import pytest

import mae.data.s3 as s3mod
from mae.data import ClassFolderDataset, ImageListDataset, RetryPolicy, resolve_source_info
from mae.errors import DataError
from tests import s3server
from tests.data_fixtures import image_bytes, make_class_tree, make_tar

s3_server = s3server.s3_server  # the session's SeaweedFS server (fixture)
s3_env = s3server.s3_env  # per test: AWS_* variables pointing at it (fixture)

FAST = RetryPolicy(max_attempts=12, base_delay=0.1, max_delay=1.0, connect_timeout=2, read_timeout=10)


@pytest.fixture
def bucket(s3_env):
    return s3_env.create_bucket()


@pytest.fixture
def count_downloads(monkeypatch):
    """Counts the objects fetched (every download in the data layer goes through download_object)."""
    calls: list[str] = []
    real = s3mod.download_object

    def counting(client, bucket, obj, *args, **kwargs):
        calls.append(obj.key)
        return real(client, bucket, obj, *args, **kwargs)

    monkeypatch.setattr(s3mod, "download_object", counting)
    return calls


def no_secret_anywhere(server, *texts):
    for text in texts:
        assert server.secret_key not in text
        assert server.access_key not in text


def test_archive_from_s3_is_downloaded_once_then_cached(s3_env, bucket, tmp_path, count_downloads, caplog):
    tree = make_class_tree(tmp_path / "images_train", {"cat": 3, "dog": 2})
    s3_env.upload_file(make_tar(tmp_path / "images_train.tar.gz", tree), bucket, "data/images_train.tar.gz")
    url = f"s3://{bucket}/data/images_train.tar.gz"
    cache = tmp_path / "cache"

    with caplog.at_level(logging.DEBUG, logger="mae.data"):
        first = resolve_source_info(url, cache_dir=cache, retry=FAST)
        assert not first.from_cache and first.bytes_downloaded > 0 and first.kind == "s3-archive"
        ds = ClassFolderDataset(first.path)
        assert ds.classes == ["cat", "dog"] and len(ds) == 5

        second = resolve_source_info(url, cache_dir=cache, retry=FAST)
    assert second.from_cache and second.path == first.path and second.bytes_downloaded == 0
    assert count_downloads == ["data/images_train.tar.gz"]  # one download for two runs
    assert not list((cache / "downloads").iterdir())  # the archive is not kept once extracted
    cached_text = "".join(p.read_text(errors="ignore") for p in cache.rglob("*.json"))
    no_secret_anywhere(s3_env, caplog.text, repr(first), cached_text)


def test_replaced_object_is_downloaded_again(s3_env, bucket, tmp_path, count_downloads):
    tree = make_class_tree(tmp_path / "v1", {"a": 1})
    s3_env.upload_file(make_tar(tmp_path / "v1.tar", tree, arcname="."), bucket, "set.tar")
    first = resolve_source_info(f"s3://{bucket}/set.tar", cache_dir=tmp_path / "c", retry=FAST)
    make_class_tree(tree, {"b": 2})
    s3_env.upload_file(make_tar(tmp_path / "v2.tar", tree, arcname="."), bucket, "set.tar")
    second = resolve_source_info(f"s3://{bucket}/set.tar", cache_dir=tmp_path / "c", retry=FAST)
    assert second.path != first.path and not second.from_cache  # a new ETag is a new cache entry
    assert len(count_downloads) == 2 and len(ClassFolderDataset(second.path).classes) == 2


def test_prefix_of_loose_files_is_mirrored_and_updated_incrementally(
    s3_env, bucket, tmp_path, count_downloads
):
    for cls in ("cat", "dog"):
        for i in range(3):
            s3_env.put_bytes(bucket, f"val/{cls}/{i}.jpg", image_bytes(color=(i * 50, 0, 0)))
    s3_env.put_bytes(bucket, "val/README.txt", b"not an image")
    s3_env.put_bytes(bucket, "other/x.jpg", image_bytes())  # outside the prefix
    url = f"s3://{bucket}/val/"
    cache = tmp_path / "cache"

    first = resolve_source_info(url, cache_dir=cache, retry=FAST)
    assert first.kind == "s3-prefix" and first.files_written == 6
    ds = ClassFolderDataset(first.path)
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    assert not (first.path / "README.txt").exists()
    assert len(count_downloads) == 6

    again = resolve_source_info(f"s3://{bucket}/val", cache_dir=cache, retry=FAST)  # same prefix, no slash
    assert again.from_cache and again.path == first.path and len(count_downloads) == 6

    s3_env.put_bytes(bucket, "val/dog/new.jpg", image_bytes(color=(9, 9, 9)))
    third = resolve_source_info(url, cache_dir=cache, retry=FAST)
    assert not third.from_cache and third.path != first.path
    assert count_downloads[6:] == ["val/dog/new.jpg"]  # the six unchanged files are reused, not fetched
    assert len(ClassFolderDataset(third.path)) == 7
    names = ImageListDataset(third.path).names
    assert f"s3://{bucket}/val/dog/new.jpg" in names  # inference names files by their S3 URL


def test_generic_endpoint_variable_is_honoured(s3_env, bucket, tmp_path, monkeypatch):
    """boto3 reads AWS_ENDPOINT_URL (all services) as well as AWS_ENDPOINT_URL_S3 by itself."""
    s3_env.put_bytes(bucket, "p/a.jpg", image_bytes())
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env.endpoint)
    info = resolve_source_info(f"s3://{bucket}/p/", cache_dir=tmp_path / "c", retry=FAST)
    assert (info.path / "a.jpg").is_file()


def test_wrong_credentials_are_a_clear_error_without_secrets(s3_env, bucket, tmp_path, monkeypatch, caplog):
    s3_env.put_bytes(bucket, "k/images.tar", b"x")
    wrong_secret = "wrong-secret-" + "z" * 20
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    with caplog.at_level(logging.DEBUG, logger="mae.data"), pytest.raises(DataError) as err:
        resolve_source_info(f"s3://{bucket}/k/images.tar", cache_dir=tmp_path / "c", retry=FAST)
    msg = str(err.value)
    assert msg.startswith(f"s3://{bucket}/k/images.tar: ") and "check the AWS credentials" in msg
    assert "\n" not in msg
    no_secret_anywhere(s3_env, msg, caplog.text)
    assert wrong_secret not in msg and wrong_secret not in caplog.text
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DataError, match="no usable AWS credentials"):
        resolve_source_info(f"s3://{bucket}/k/images.tar", cache_dir=tmp_path / "c", retry=FAST)


def test_missing_objects_and_empty_prefixes_are_clear_errors(s3_env, bucket, tmp_path):
    with pytest.raises(DataError, match=rf"s3://{bucket}/nope\.tar\.gz: not found"):
        resolve_source_info(f"s3://{bucket}/nope.tar.gz", cache_dir=tmp_path / "c", retry=FAST)
    with pytest.raises(DataError, match=rf"s3://{bucket}/empty/: no image files .* empty or does not exist"):
        resolve_source_info(f"s3://{bucket}/empty/", cache_dir=tmp_path / "c", retry=FAST)
    with pytest.raises(DataError, match="not found"):
        resolve_source_info("s3://no-such-bucket-mae/x/", cache_dir=tmp_path / "c", retry=FAST)
    with pytest.raises(DataError, match="credentials or ports in an s3:// URL are not supported"):
        resolve_source_info("s3://key:secret@bucket/x.tar", cache_dir=tmp_path / "c")
    assert "secret" not in str(pytest.raises(DataError, resolve_source_info, "s3://key:secret@b/x.tar").value)


def test_throttling_and_server_errors_are_retried_permanent_errors_are_not(caplog):
    """Retry classification with botocore's Stubber: SlowDown/503 twice, then success; 403 at once."""
    import boto3
    from botocore.stub import Stubber

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    url = s3mod.S3Url("bkt", "x.tar")
    sleeps: list[float] = []
    with Stubber(client) as stub:
        stub.add_client_error("head_object", service_error_code="SlowDown", http_status_code=503)
        stub.add_client_error("head_object", service_error_code="InternalError", http_status_code=500)
        stub.add_response("head_object", {"ContentLength": 10, "ETag": '"abc"'})
        with caplog.at_level(logging.WARNING, logger="mae.data"):
            info = s3mod.call_with_retry(
                lambda: client.head_object(Bucket="bkt", Key="x.tar"),
                what=str(url),
                policy=RetryPolicy(base_delay=0.5),
                sleep=sleeps.append,
            )
        assert info["ContentLength"] == 10
        assert len(sleeps) == 2 and 0.25 <= sleeps[0] <= 0.5 and 0.5 <= sleeps[1] <= 1.0  # backoff grows
        assert "SlowDown" in caplog.text and "retrying" in caplog.text

        stub.add_client_error("head_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(DataError, match="AccessDenied"):
            s3mod.call_with_retry(
                lambda: client.head_object(Bucket="bkt", Key="x.tar"),
                what=str(url),
                policy=RetryPolicy(),
                sleep=sleeps.append,
            )
        assert len(sleeps) == 2  # no retry for a permanent error


def _big_archive(tmp_path, mib: int = 32):
    """An uncompressed tar with one large random file (so a download takes many chunks)."""
    src = tmp_path / "big"
    src.mkdir()
    blob = os.urandom(mib << 20)
    (src / "blob.jpg").write_bytes(blob)
    return make_tar(tmp_path / "big.tar", src, arcname="."), hashlib.sha256(blob).hexdigest()


@pytest.mark.slow  # 5-10 s: restarts the server
def test_download_survives_a_server_restart(s3_env, bucket, tmp_path, caplog):
    """The server is killed after the first MiB and restarted a moment later: the download retries,
    resumes from where it stopped and the result is intact."""
    archive, digest = _big_archive(tmp_path)
    s3_env.upload_file(archive, bucket, "big.tar")
    state = {"killed": False, "bytes": 0}
    restarted = threading.Event()

    def restart_later():
        time.sleep(0.5)
        s3_env.start()
        restarted.set()

    def on_chunk(n: int) -> None:
        state["bytes"] += n
        if not state["killed"]:
            state["killed"] = True
            s3_env.kill()  # mid-download: about 31 MiB are still to come
            threading.Thread(target=restart_later, daemon=True).start()

    # patient enough for a restart: the S3 port refuses, then answers 500 for a few seconds until the
    # volume server has registered again (longer on a busy machine)
    patient = RetryPolicy(max_attempts=60, base_delay=0.1, max_delay=1.0, connect_timeout=2, read_timeout=10)
    with caplog.at_level(logging.WARNING, logger="mae.data"):
        info = resolve_source_info(
            f"s3://{bucket}/big.tar", cache_dir=tmp_path / "c", retry=patient, progress=on_chunk
        )
    assert restarted.wait(60)
    assert state["killed"] and "download interrupted" in caplog.text
    assert hashlib.sha256((info.path / "blob.jpg").read_bytes()).hexdigest() == digest
    # resumed, not restarted from zero: far fewer than two full copies went over the wire
    assert info.bytes_downloaded < 1.5 * (32 << 20)
    no_secret_anywhere(s3_env, caplog.text)


@pytest.mark.slow  # ~10 s: 32 MiB up and down, a server restart
def test_download_gives_up_with_a_clear_message_when_the_server_stays_down(s3_env, bucket, tmp_path):
    archive, _ = _big_archive(tmp_path, mib=32)  # larger than the socket buffers: the kill must be felt
    s3_env.upload_file(archive, bucket, "big.tar")
    policy = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=0.1, connect_timeout=1, read_timeout=5)
    killed = []

    def on_chunk(n: int) -> None:
        if not killed:
            killed.append(True)
            s3_env.kill()

    try:
        t0 = time.monotonic()
        with pytest.raises(DataError) as err:
            resolve_source_info(
                f"s3://{bucket}/big.tar", cache_dir=tmp_path / "c", retry=policy, progress=on_chunk
            )
        elapsed = time.monotonic() - t0
    finally:
        s3_env.start()
    msg = str(err.value)
    assert msg.startswith(f"s3://{bucket}/big.tar: download failed after 3 attempts")
    assert "run again (the download resumes)" in msg and s3_env.endpoint in msg
    assert elapsed < 15
    no_secret_anywhere(s3_env, msg)
    # the partial download is kept for resuming, and no cache entry pretends to be complete
    assert [p.suffix for p in (tmp_path / "c" / "downloads").iterdir()] == [".part"]
    assert not [p for p in (tmp_path / "c" / "sources").iterdir() if ".tmp-" not in p.name]
    # next run (server back): resumes from the .part file and completes
    info = resolve_source_info(f"s3://{bucket}/big.tar", cache_dir=tmp_path / "c", retry=FAST)
    assert (info.path / "blob.jpg").stat().st_size == 32 << 20
    # only what was missing: the object less the part kept from the first try (at least one 1 MiB chunk)
    assert info.bytes_downloaded <= archive.stat().st_size - (1 << 20)


def test_redaction_and_retry_settings(monkeypatch):
    from mae.errors import ConfigError

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SuperSecretValue123")
    text = (
        "GET http://user:SuperSecretValue123@host:9000/b/k?X-Amz-Signature=abcdef&X-Amz-Credential=AKIA/x "
        "failed with SuperSecretValue123"
    )
    out = s3mod.redact(text)
    assert "SuperSecretValue123" not in out and "abcdef" not in out and "AKIA/x" not in out
    assert "http://***@host:9000/b/k" in out
    monkeypatch.setenv("MAE_S3_MAX_ATTEMPTS", "3")
    assert RetryPolicy.from_env().max_attempts == 3
    monkeypatch.setenv("MAE_S3_MAX_ATTEMPTS", "many")
    with pytest.raises(ConfigError, match="MAE_S3_MAX_ATTEMPTS='many'"):
        RetryPolicy.from_env()
    p = RetryPolicy(base_delay=1.0, max_delay=5.0)
    assert all(0.5 * min(5.0, 2 ** (k - 1)) <= p.delay(k) <= min(5.0, 2 ** (k - 1)) for k in range(1, 8))

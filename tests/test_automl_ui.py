"""`automl ui` stops the MLflow server and all its workers on SIGTERM and SIGHUP, not only on Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from automl.ui import free_port, wait_for_ui


def _children() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            out[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(pid: int) -> set[int]:
    parents = _children()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _port_free(port: int) -> bool:
    """Nothing listens on `port`. SO_REUSEADDR, as any server sets it, so that the TIME_WAIT left by our own
    HTTP probes does not count; a live listener still makes the bind fail."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_ui_stops_its_whole_process_group(tmp_path, sig):
    (tmp_path / "automl").mkdir()
    (tmp_path / "automl" / "experiment.json").write_text(json.dumps({"rounds": []}))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "automl.cli", "ui", str(tmp_path), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert wait_for_ui(f"http://127.0.0.1:{port}", timeout=240), (
            "the MLflow UI did not answer: " + _output(proc)
        )
        helpers = _descendants(proc.pid)
        assert len(helpers) >= 2  # the mlflow server and at least one worker
        os.kill(proc.pid, sig)
        assert proc.wait(timeout=30) == 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in helpers):
            time.sleep(0.2)
        assert not [p for p in helpers if _alive(p)], "processes of the UI outlived automl ui"
        assert _port_free(port)
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in _descendants(proc.pid):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _output(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        return "(still running)"
    return (proc.stdout.read() if proc.stdout else "")[-2000:]

"""`automl ui`: the MLflow UI over an experiment's tracking store, bound to 127.0.0.1 by default.

The MLflow server forks workers that outlive a SIGTERM sent to the server alone, so the UI runs in its own
process group (session) and is stopped as a group: SIGTERM first, SIGKILL after a short grace period.
`automl ui` stops it the same way on Ctrl-C, SIGTERM and SIGHUP (a process manager, `kill`, a closed terminal).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mae.tracking import tracking_uri

STOP_GRACE_S = 5.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ui_command(results_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 5000) -> list[str]:
    """The `mlflow ui` command for an experiment's tracking store (SQLite in the results folder)."""
    uri = tracking_uri(results_dir)
    return [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]


class UIProcess:
    """A running MLflow UI: `url`, `proc`, and `stop()` that ends the whole process group."""

    def __init__(self, proc: subprocess.Popen, url: str):
        self.proc, self.url = proc, url

    def stop(self, grace_s: float = STOP_GRACE_S) -> None:
        stop_group(self.proc, grace_s)

    # (process, url) unpacking, as start_ui returned before it had a class
    def __iter__(self):
        return iter((self.proc, self.url))

    def __enter__(self) -> UIProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_ui(
    results_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int | None = None, **popen
) -> UIProcess:
    """Start the MLflow UI on `host:port` (a free port when None) in its own process group."""
    port = port or free_port(host)
    proc = subprocess.Popen(
        ui_command(Path(results_dir), host=host, port=port), start_new_session=True, **popen
    )
    return UIProcess(proc, f"http://{host}:{port}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_group(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM to the process group of `proc` (started with start_new_session), SIGKILL to what is left after
    `grace_s`; returns once the leader is reaped and the group is gone (or after the SIGKILL)."""
    pgid = proc.pid  # the leader of a new session is its group's id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        proc.poll()
        if proc.returncode is not None and not _group_alive(pgid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def serve_ui(results_dir: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 5000) -> int:
    """Run the UI until it exits or this process gets SIGINT, SIGTERM or SIGHUP; the group is stopped then."""
    ui = start_ui(results_dir, host=host, port=port or free_port(host))
    print(f"automl: MLflow UI of {results_dir} on {ui.url} (Ctrl-C to stop)", flush=True)

    def on_signal(signum, frame):
        raise KeyboardInterrupt

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return ui.proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        ui.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


def wait_for_ui(url: str, proc=None, timeout: float = 90.0) -> bool:
    """True once the UI answers on `url` (MLflow needs ~15 s to start)."""
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    return False

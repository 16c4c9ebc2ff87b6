"""The Ray session and the experiment's storage: local Ray started on demand (or the cluster at --address),
Tune's storage on a local folder or S3, and the clean-up of processes a killed driver left behind."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mae.errors import ConfigError
from mae.layout import ExperimentLayout

if TYPE_CHECKING:
    from automl.options import SearchOptions


def storage_location(storage: str | None, files: ExperimentLayout) -> tuple[str, Any, str]:
    """(storage_path for Tune, pyarrow filesystem or None, the URI to show). `s3://bucket/prefix` gets an S3
    filesystem that reads credentials from the standard AWS chain on each node (never pickled into the
    experiment) and the endpoint from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (S3-compatible stores)."""
    if not storage:
        path = files.default_storage
        path.mkdir(parents=True, exist_ok=True)
        return str(path), None, str(path)
    if storage.startswith("s3://"):
        import pyarrow.fs as pafs

        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        kwargs: dict[str, Any] = {}
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            kwargs.update(
                endpoint_override=host.rstrip("/") if host else scheme, scheme=scheme if host else "https"
            )
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        fs = pafs.S3FileSystem(**kwargs)
        return storage[len("s3://") :].rstrip("/"), fs, storage.rstrip("/")
    if "://" in storage:
        raise ConfigError(f"--storage {storage!r}: use a local folder or s3://bucket/prefix")
    path = Path(os.path.expanduser(storage)).resolve()
    path.mkdir(parents=True, exist_ok=True)
    return str(path), None, str(path)


def filesystem_for(storage_uri: str | None) -> tuple[Any, str | None]:
    """The filesystem for checkpoint paths recorded under `storage_uri` (None: local)."""
    if storage_uri and storage_uri.startswith("s3://"):
        _, fs, _ = storage_location(storage_uri, ExperimentLayout(Path(".")))
        return fs, storage_uri
    return None, storage_uri


@dataclass
class RaySession:
    started_here: bool
    trial_slots: bool  # the cluster has our `trial_slot` resource (local Ray started by the runner)
    gpus: float
    cpus: float
    address: str | None


RUNTIME_ENV_VARS = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",  # trials keep the driver's working directory (paths are absolute anyway)
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    "PYTHONWARNINGS": "ignore::DeprecationWarning",
}


def start_ray(options: SearchOptions, trial_slots: int) -> RaySession:
    """Local Ray (with the dashboard: Ray Train needs its state API to release stopped trials' resources) or
    the cluster at --address. A Ray already started by the caller is used as it is."""
    import ray

    for k, v in RUNTIME_ENV_VARS.items():
        os.environ.setdefault(k, v)
    # Snapshot the experiment at least every 2 s, so a killed driver loses little (finished trials that the
    # last snapshot missed are still kept: see TrialContext.done).
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "2")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not options.verbose:
        # failures are reported by the ledger, one line each (the tracebacks stay in the trials' error files)
        os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
        for name in ("ray.tune", "ray.train", "ray.air"):
            logging.getLogger(name).setLevel(logging.WARNING)
    started = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {
            "log_to_driver": options.verbose,
            "logging_level": logging.INFO if options.verbose else logging.WARNING,
            "runtime_env": {"env_vars": dict(RUNTIME_ENV_VARS)},
        }
        address = options.address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(
                address="local",  # a new local Ray, never another one that happens to run on this machine
                resources={"trial_slot": trial_slots},
                include_dashboard=True,
                dashboard_host="127.0.0.1",
                **kwargs,
            )
        started = True
    res = ray.cluster_resources()
    return RaySession(
        started_here=started,
        trial_slots="trial_slot" in res,
        gpus=float(res.get("GPU", 0)),
        cpus=float(res.get("CPU", 0)),
        address=options.address,
    )


def stop_orphans(exp: Mapping[str, Any]) -> list[int]:
    """Processes of the local Ray that a killed driver left behind (recorded at start), ended by their id."""
    ended = []
    for pid in exp.get("ray_pids") or []:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        session = exp.get("ray_session") or ""
        if not session or session not in cmdline:
            continue  # not a process of that Ray session (the id may have been reused)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            ended.append(pid)
    return ended


def local_ray_pids() -> tuple[list[int], str]:
    try:
        import ray._private.worker as w

        node = w._global_node
        pids = []
        for infos in node.all_processes.values():
            for info in infos:
                pids.append(info.process.pid)
        return pids, os.path.basename(node.get_session_dir_path())
    except Exception:  # private API: best effort only
        return [], ""


# ------------------------------------------------------------------------------------------- the run


def round_exists(storage_path: str, fs: Any, name: str) -> bool:
    from ray.tune import Tuner

    path = f"s3://{storage_path}/{name}" if fs is not None else os.path.join(storage_path, name)
    with contextlib.suppress(Exception):
        return Tuner.can_restore(path, storage_filesystem=fs) if fs is not None else Tuner.can_restore(path)
    return False


def check_devices(options: SearchOptions, session: RaySession) -> None:
    """GPU options that cannot work on this cluster: one line each, before anything starts."""
    if options.gpu_hours is not None and session.gpus == 0:
        raise ConfigError(
            f"--gpu-hours {options.gpu_hours:g}: this Ray cluster has no GPU, so no GPU-hours would ever be "
            "spent; limit the search by wall-clock time with --time-budget SECONDS instead"
            + (" (if your cluster autoscales GPU nodes, start one first)" if options.address else "")
        )
    if options.gpus_per_trial and session.gpus == 0 and not options.address:
        raise ConfigError(
            f"--gpus-per-trial {options.gpus_per_trial:g}: this machine has no GPU for Ray; drop the flag "
            "(trials then train on the CPU)"
        )

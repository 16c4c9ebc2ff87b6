"""An experiment's files and what is read back from them (the layout itself is mae.layout.ExperimentLayout).

`experiment.json` holds what was asked (spec, overrides, metric, space, algorithm, seed, storage, the rounds and
their budgets, the MLflow parent run); `state.json` holds every trial (kept by automl.ledger); `summary.json`
is written after the search (automl.report).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mae.errors import MAEError
from mae.fileio import atomic_write_json
from mae.layout import ExperimentLayout

STATE_VERSION = 1
FINAL_STATUSES = ("completed", "stopped", "failed", "infeasible")

__all__ = [
    "FINAL_STATUSES",
    "STATE_VERSION",
    "ExperimentLayout",
    "best_configs",
    "count_trials",
    "find_experiment",
    "finished_trials",
    "fingerprint",
    "finite",
    "now",
    "write_json",
]


def now() -> str:
    return dt.datetime.now().isoformat(timespec="seconds")


def write_json(path: Path, data: Any) -> None:
    atomic_write_json(path, data)


def finite(v: Any) -> float | None:
    """v as a float when it is a finite number, else None."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def fingerprint(data: Mapping[str, Any]) -> str:
    """What identifies an experiment's settings: a rerun with other settings must not resume it."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def find_experiment(path: str | os.PathLike) -> ExperimentLayout:
    """The experiment of a results folder (its `automl/` folder, or the `automl/` folder itself)."""
    found = ExperimentLayout.of_folder(Path(os.path.expanduser(str(path))).resolve())
    if found is None:
        raise MAEError(
            f"{path}: no AutoML experiment here (no automl/experiment.json); give the results_dir of an "
            "`automl run`"
        )
    return found


def finished_trials(files: ExperimentLayout) -> dict[str, dict[str, Any]]:
    """Trials the record shows finished ({trial_id: {status, failure}}): if Tune's last snapshot before a crash
    missed their end, the resumed experiment would run them again; the trial function returns at once instead
    (or fails again with the recorded reason)."""
    state = files.read("state") or {}
    return {
        tid: {"status": t["status"], "failure": t.get("failure")}
        for tid, t in state.get("trials", {}).items()
        if t.get("status") in FINAL_STATUSES
    }


def count_trials(files: ExperimentLayout) -> int:
    return len((files.read("state") or {}).get("trials", {}))


def best_configs(files: ExperimentLayout, mode: str, n: int) -> list[dict[str, Any]]:
    """The configurations of the best trials so far (for PBT's warm start in --extend)."""
    state = files.read("state") or {}
    done = [t for t in state.get("trials", {}).values() if t.get("best")]
    done.sort(key=lambda t: t["best"]["value"], reverse=(mode == "max"))
    return [t["config"] for t in done[:n]]

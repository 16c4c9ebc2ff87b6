"""MLflow for AutoML: a parent run per experiment, a child run per trial, plots, and `automl ui`.

Only the Tune driver writes to MLflow (trial metrics reach it through Tune's reports), so the embedded SQLite
store `<results_dir>/mlflow.db` serves a multi-node cluster too; MLFLOW_TRACKING_URI points everything at a
shared tracking server instead.

  parent run  "automl"                 params: metric, mode, algorithm, searcher, scheduler, policy, budgets,
                                       seed, and each searched parameter's range (space.<name>);
                                       tags: package versions, git revision, data fingerprint, policy reason;
                                       at the end: best_<metric>, trial counts, summary.json, the best spec,
                                       plots (optimization history, parameter importance)
  child runs  "trial <trial_id>"       tagged mlflow.parentRunId; params: the trial's searched values and its
                                       whole spec; metrics per epoch (train_loss, val_loss, knn_acc/ACC_all,
                                       lr, images_per_sec, epoch_time_s, peak memory); tags: status
                                       (completed, stopped, failed), failure kind and reason, checkpoint path,
                                       node, the same versions, git revision and data fingerprint.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mae.config import ExperimentConfig
from mae.fileio import atomic_write_json
from mae.layout import ExperimentLayout
from mae.metrics import EPOCH_KEYS
from mae.tracking import RunLogger, flat_params

log = logging.getLogger("automl")

PACKAGES = ("torch", "pytorch_lightning", "timm", "ray", "optuna", "mlflow", "onnx", "onnxruntime")


# --------------------------------------------------------------------------------- run context tags


def package_versions() -> dict[str, str]:
    from importlib import metadata

    from mae import __version__

    out = {"mae-automl": __version__, "python": sys.version.split()[0]}
    for name in PACKAGES:
        dist = {"pytorch_lightning": "pytorch-lightning"}.get(name, name)
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[name] = metadata.version(dist)
    return out


def git_revision() -> str | None:
    """The source revision of this package (a `-dirty` suffix when the work tree has changes), or None."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        return rev.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def data_fingerprint(cfg: ExperimentConfig) -> str:
    """A short hash of the data sources' identities: path, size and modification time of local files (every
    file under a folder), the key of an s3:// source (its ETag is checked where the data is read)."""
    h = hashlib.sha256()
    d = cfg.dataset
    for key in ("train_data_sources", "val_data_sources"):
        value = getattr(d, key)
        for src in [value] if isinstance(value, str) else (value or []):
            h.update(f"{key}={src};".encode())
            if not src or "://" in src:
                continue
            p = Path(os.path.expanduser(src))
            if p.is_file():
                st = p.stat()
                h.update(f"{st.st_size}:{int(st.st_mtime)};".encode())
            elif p.is_dir():
                for f in sorted(p.rglob("*")):
                    if f.is_file():
                        st = f.stat()
                        h.update(f"{f.relative_to(p)}:{st.st_size}:{int(st.st_mtime)};".encode())
    return h.hexdigest()[:16]


def run_context_tags(cfg: ExperimentConfig) -> dict[str, str]:
    tags = {f"version.{k}": v for k, v in package_versions().items()}
    rev = git_revision()
    if rev:
        tags["git_revision"] = rev
    tags["data_fingerprint"] = data_fingerprint(cfg)
    tags["stage"] = cfg.train.stage
    tags["arch"] = cfg.model.arch
    return tags


# ------------------------------------------------------------------------------------- the tracker


class ExperimentTracker:
    """The MLflow parent run of an experiment and the Tune callback that writes its child runs."""

    def __init__(self, results_dir: str | os.PathLike, experiment: str, parent_run_id: str | None = None):
        self.results_dir = str(results_dir)
        self.experiment = experiment
        self.parent_run_id = parent_run_id

    def start_parent(self, params: Mapping[str, Any], tags: Mapping[str, str]) -> str:
        run = RunLogger(self.results_dir, self.experiment, "automl", tags={**tags, "automl": "experiment"})
        run.log_params({k: v for k, v in params.items() if v is not None})
        self.parent_run_id = run.run_id
        return run.run_id

    def _parent(self) -> RunLogger | None:
        if not self.parent_run_id:
            return None
        return RunLogger(self.results_dir, self.experiment, "automl", run_id=self.parent_run_id)

    def resume_parent(self) -> None:
        self._parent()  # marks it RUNNING again

    def finish_parent(self, summary: Mapping[str, Any], files, plots: Sequence[str] = ()) -> None:
        parent = self._parent()
        if parent is None:
            return
        metric = summary.get("metric")
        best = summary.get("best")
        metrics = {
            "trials_total": summary.get("trials_total", 0),
            "trial_epochs": summary.get("trial_epochs", 0),
            "elapsed_s": summary.get("elapsed_s", 0.0),
            "gpu_hours": summary.get("gpu_hours", 0.0),
        }
        for status, n in (summary.get("counts") or {}).items():
            metrics[f"trials_{status}"] = n
        if best:
            metrics[f"best_{metric}"] = best["value"]
        parent.log_metrics(metrics, step=0)
        for step, entry in enumerate(summary.get("hypervolume_by_round") or []):  # multi-objective searches
            parent.log_metrics({"hypervolume": entry["hypervolume"]}, step=step + 1)
        tags = {"status": "finished" if summary.get("finished") else "interrupted"}
        if best:
            tags.update(best_trial=best["trial_id"], best_checkpoint=str(best.get("checkpoint")))
        d = summary.get("deploy") or {}
        for s in d.get("skipped", []):
            tags["deploy_skipped"] = s
        parent.set_tags(tags)
        with contextlib.suppress(Exception):  # artifacts are a convenience; the summary is on disk anyway
            parent.log_artifact(files.summary)
            for name in ("spec.yaml", "best.json"):
                path = files.best / name
                if path.is_file():
                    parent.log_artifact(path, "best")
            for p in plots:
                parent.log_artifact(p, "plots")
        parent.finish("FINISHED" if summary.get("finished") else "KILLED")

    def tune_callback(self, ctx, metric: str, mode: str, max_epochs: int, round_name: str):
        return _make_child_callback(self, ctx, metric, mode, max_epochs, round_name)


def _make_child_callback(
    tracker: ExperimentTracker, ctx, metric: str, mode: str, max_epochs: int, round_name: str
):
    from ray.tune import Callback

    class MLflowTrials(Callback):
        """A child run per trial (driver side), created when the trial starts and kept across restores."""

        def __init__(self):
            self.runs: dict[str, str] = {}
            self.best: dict[str, float] = {}
            self._loggers: dict[str, RunLogger] = {}
            self._tags: dict[str, str] | None = None

        def setup(self, **info):
            self.runs = dict(_read_runs(tracker.results_dir))

        def _logger(self, trial) -> RunLogger:
            tid = trial.trial_id
            if tid in self._loggers:
                return self._loggers[tid]
            run_id = self.runs.get(tid)
            if run_id is None:
                if self._tags is None:
                    self._tags = _context_tags_for(ctx)
                run = RunLogger(
                    tracker.results_dir,
                    tracker.experiment,
                    f"trial {tid}",
                    tags={
                        "mlflow.parentRunId": tracker.parent_run_id or "",
                        "trial_id": tid,
                        "round": round_name,
                        "status": "running",
                        **self._tags,
                    },
                )
                self.runs[tid] = run.run_id
                _write_runs(tracker.results_dir, self.runs)
                self._log_params(run, trial)
            else:
                run = RunLogger(tracker.results_dir, tracker.experiment, f"trial {tid}", run_id=run_id)
            self._loggers[tid] = run
            return run

        def _log_params(self, run: RunLogger, trial) -> None:
            from automl.trial import build_trial_spec, trial_values

            values = trial_values(ctx.space, trial.config, rng=0)
            params = {f"searched.{k}": v for k, v in values.items()}
            with contextlib.suppress(Exception):  # a spec that does not validate fails in the trial itself
                cfg = build_trial_spec(ctx, values, trial.trial_id)
                params.update(flat_params(cfg.model_dump(mode="json")))
            run.log_params(params)

        def on_trial_start(self, iteration, trials, trial, **info):
            run = self._logger(trial)
            run.set_tags({"status": "running"})

        on_trial_restore = on_trial_start

        def on_trial_result(self, iteration, trials, trial, result, **info):
            run = self._logger(trial)
            step = int(result.get("training_iteration", 0))
            metrics = {
                k: float(result[k])
                for k in (*EPOCH_KEYS, metric)
                if k in result and isinstance(result[k], (int, float)) and math.isfinite(float(result[k]))
            }
            value = metrics.get(metric)
            if value is not None:
                best = self.best.get(trial.trial_id)
                if best is None or (value < best if mode == "min" else value > best):
                    self.best[trial.trial_id] = value
                metrics[f"best_{metric}"] = self.best[trial.trial_id]
            run.log_metrics(metrics, step=step)
            if result.get("node_ip"):
                run.set_tags({"node_ip": result["node_ip"]})

        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            self._logger(trial).set_tags({"checkpoint": checkpoint.path, "trial_dir": _trial_dir(ctx, trial)})

        def on_trial_complete(self, iteration, trials, trial, **info):
            epochs = int((trial.last_result or {}).get("training_iteration", 0))
            status = "completed" if epochs >= max_epochs else "stopped"
            run = self._logger(trial)
            run.set_tags({"status": status, "epochs": epochs})
            run.finish("FINISHED")

        def on_trial_error(self, iteration, trials, trial, **info):
            from automl.trial import error_text, failure_of

            kind, reason = failure_of(error_text(trial))
            run = self._logger(trial)
            run.set_tags({"status": "failed", "failure_kind": kind, "failure": reason[:500]})
            run.finish("FAILED")

        def on_experiment_end(self, trials, **info):
            """Child runs of trials that a crash lost (Tune's last snapshot never saw them) end as KILLED."""
            live = {t.trial_id for t in trials}
            state = _read_state(tracker.results_dir)
            lost = set((state.get("rounds", {}).get(round_name) or {}).get("lost", []))
            for tid in lost - live:
                run_id = self.runs.get(tid)
                if run_id:
                    with contextlib.suppress(Exception):
                        run = RunLogger(
                            tracker.results_dir, tracker.experiment, f"trial {tid}", run_id=run_id
                        )
                        run.set_tags(
                            {"status": "lost", "lost": "started before a crash, never recorded by Tune"}
                        )
                        run.finish("KILLED")

        def on_trial_recover(self, iteration, trials, trial, **info):
            from automl.trial import error_text, failure_of

            kind, reason = failure_of(error_text(trial))
            self._logger(trial).set_tags(
                {"status": "retrying", "failure_kind": kind, "failure": reason[:500]}
            )

    return MLflowTrials()


def _trial_dir(ctx, trial) -> str:
    from automl.plan import trial_results_dir

    return trial_results_dir(ctx.results_dir, trial.trial_id)


def _context_tags_for(ctx) -> dict[str, str]:
    from automl.trial import build_trial_spec

    try:
        values = ctx.space.sample(0)
        cfg = build_trial_spec(ctx, values, "context")
        return run_context_tags(cfg)
    except Exception:  # tags are informative; a spec problem shows up in the trials
        return {f"version.{k}": v for k, v in package_versions().items()}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _read_state(results_dir: str) -> dict:
    return _read_json(ExperimentLayout(Path(results_dir)).state)


def _read_runs(results_dir: str) -> dict[str, str]:
    return _read_json(ExperimentLayout(Path(results_dir)).mlflow_runs)


def _write_runs(results_dir: str, runs: Mapping[str, str]) -> None:
    atomic_write_json(ExperimentLayout(Path(results_dir)).mlflow_runs, dict(runs))

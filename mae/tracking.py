"""MLflow run logging shared by plain runs (`mae train`) and AutoML (which adds parent/child runs).

Embedded default: a SQLite store `<results_dir>/mlflow.db` with artifacts beside it in `<results_dir>/mlartifacts`;
`MLFLOW_TRACKING_URI` points everything at a shared tracking server instead.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mae.layout import MLFLOW_DB

log = logging.getLogger("mae")

MAX_PARAM_CHARS = 500  # MLflow's param value limit is larger on SQL stores; keep the UI readable


def tracking_uri(results_root: str | os.PathLike) -> str:
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str(Path(results_root).resolve() / MLFLOW_DB)


def get_experiment_id(client, name: str, results_root: str | os.PathLike) -> str:
    """The experiment's id, creating it with an explicit artifact location under the results folder."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    artifacts = (Path(results_root).resolve() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except Exception:  # created meanwhile by a concurrent process (MLflow raises a generic MlflowException)
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def flat_params(spec: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in spec.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flat_params(v, key + "."))
        else:
            text = str(v)
            out[key] = text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
    return out


class RunLogger:
    """One MLflow run, written through MlflowClient (no global active-run state, safe inside Ray actors)."""

    def __init__(
        self,
        results_root: str | os.PathLike,
        experiment: str,
        run_name: str,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
    ):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri(results_root))
        if run_id is not None:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            exp_id = get_experiment_id(self.client, experiment, results_root)
            run = self.client.create_run(exp_id, run_name=run_name, tags=dict(tags or {}))
            self.run_id = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items()]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path)

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


class WandbRun:
    """Weights & Biases beside MLflow when `wandb.enable: true`. `start` returns None, with one warning line,
    when the optional `wandb` package is missing (pip install 'mae-automl[wandb]')."""

    def __init__(self, run):
        self.run = run

    @classmethod
    def start(cls, cfg, run_name: str, results_dir: str | os.PathLike) -> WandbRun | None:
        w = cfg.wandb
        if not w.enable:
            return None
        try:
            import wandb
        except ImportError:
            log.warning(
                "wandb.enable is true but the 'wandb' package is not installed: W&B logging is off "
                "(pip install 'mae-automl[wandb]'); MLflow still records the run"
            )
            return None
        run = wandb.init(
            project=w.project,
            entity=w.entity,
            group=w.group,
            tags=list(w.tags) or None,
            name=w.name or run_name,
            id=w.run_id,
            resume="allow" if w.run_id else None,
            reinit=w.reinit,
            save_code=w.save_code,
            sync_tensorboard=w.sync_tensorboard,
            dir=str(results_dir),
            config=cfg.model_dump(mode="json"),
        )
        return cls(run)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def finish(self, status: str = "FINISHED") -> None:
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)

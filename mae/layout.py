"""The results folder's layout: one home for every file and folder name that `mae` and `automl` share. Torch-free.

    <results_dir>/
      train/ evaluate/ inference/ export/ gen_trt_engine/   one folder per action run (TrainLayout for train/)
        checkpoints/{last,best,epoch-N,step-N}.ckpt  status.json  classes.json
      automl/                                             ExperimentLayout
        experiment.json  state.json  summary.json  optuna.journal  mlflow_runs.json
        ray/             Ray Tune's experiment storage (unless --storage says elsewhere)
        trials/<id>/     each trial's training folder (a TrainLayout)
        best/            the best trial's spec, best.ckpt, ONNX file, engine
        plots/
      mlflow.db          the MLflow SQLite store of every run under this folder
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ACTIONS = ("train", "evaluate", "inference", "export", "gen_trt_engine")
MLFLOW_DB = "mlflow.db"
STATUS_FILE = "status.json"  # one JSON object per line, as TAO writes it
CLASSES_FILE = "classes.json"
CHECKPOINTS_DIR = "checkpoints"
LAST_CKPT = "last.ckpt"
BEST_CKPT = "best.ckpt"
EPOCH_CKPT_PATTERN = "epoch-{epoch}"  # Lightning's ModelCheckpoint filename patterns
STEP_CKPT_PATTERN = "step-{step}"
AUTOML_DIR = "automl"
TRIALS_DIR = "trials"
TUNE_CHECKPOINT_FILE = "checkpoint.ckpt"  # inside each Ray Tune checkpoint folder
TUNE_EPOCH_FILE = "epoch.json"  # the epoch's metrics, beside it


@dataclass(frozen=True)
class TrainLayout:
    """A training run's folder (`<results_dir>/train/` or an AutoML trial's folder)."""

    root: Path

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS_DIR

    @property
    def last(self) -> Path:
        return self.checkpoints / LAST_CKPT

    @property
    def best(self) -> Path:
        return self.checkpoints / BEST_CKPT

    @property
    def status(self) -> Path:
        return self.root / STATUS_FILE

    @property
    def classes(self) -> Path:
        return self.root / CLASSES_FILE

    @property
    def finished(self) -> bool:
        """Whether the run's last word in status.json is SUCCESS (a failed, interrupted or resumed-and-running
        run is not finished; a line torn by a crash neither)."""
        if not self.status.exists():
            return False
        lines = self.status.read_text().splitlines()
        try:
            return bool(lines) and json.loads(lines[-1]).get("status") == "SUCCESS"
        except json.JSONDecodeError:
            return False

    def epoch_metrics(self) -> dict[int, dict]:
        """The metrics of each finished epoch in status.json, by epoch (counted from 0), {} before the first;
        the final SUCCESS line repeats the best epoch's metrics without an epoch and is left out."""
        if not self.status.exists():
            return {}
        out = {}
        for line in self.status.read_text().splitlines():
            entry = json.loads(line)
            if entry.get("epoch") is not None and entry.get("kpi"):
                out[int(entry["epoch"])] = entry["kpi"]
        return out


@dataclass(frozen=True)
class ExperimentLayout:
    """Where an AutoML experiment's files are: `<results_dir>/automl/...`."""

    results_dir: Path

    @property
    def root(self) -> Path:
        return Path(self.results_dir) / AUTOML_DIR

    @property
    def experiment(self) -> Path:
        return self.root / "experiment.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def best(self) -> Path:
        return self.root / "best"

    @property
    def best_checkpoint(self) -> Path:
        return self.best / BEST_CKPT

    @property
    def plots(self) -> Path:
        return self.root / "plots"

    @property
    def journal(self) -> Path:
        return self.root / "optuna.journal"

    @property
    def mlflow_runs(self) -> Path:
        return self.root / "mlflow_runs.json"

    @property
    def refused(self) -> Path:
        """Configurations refused before they became trials (they break a deploy constraint)."""
        return self.root / "refused.json"

    @property
    def deploy_profile(self) -> Path:
        return self.root / "deploy_profile.json"

    @property
    def default_storage(self) -> Path:
        return self.root / "ray"

    @property
    def trials(self) -> Path:
        return self.root / TRIALS_DIR

    def trial_dir(self, trial_id: str) -> Path:
        return self.trials / trial_id

    def read(self, which: str) -> dict[str, Any] | None:
        """experiment/state/summary as a dict; None when absent; MAEError when unreadable."""
        from mae.errors import MAEError

        path = getattr(self, which)
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise MAEError(f"{path} is unreadable ({e}); remove it to start the experiment afresh") from None

    @classmethod
    def of_folder(cls, folder: str | os.PathLike) -> ExperimentLayout | None:
        """The experiment of a results folder or of its `automl/` folder itself; None when there is none."""
        p = Path(folder)
        if cls(p).experiment.is_file():
            return cls(p)
        if p.name == AUTOML_DIR and (p / "experiment.json").is_file():
            return cls(p.parent)
        return None

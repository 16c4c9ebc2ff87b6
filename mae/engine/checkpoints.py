"""Checkpoint files: atomic writes, safe reads, and parent-model resolution (a results folder may stand
wherever a checkpoint is expected).

Our checkpoints are Lightning `.ckpt` files (the full training state, for resume). Their `hyper_parameters`
hold plain data only (the resolved spec, stage, arch, classes), so every checkpoint loads with
`torch.load(weights_only=True)`: a checkpoint from outside cannot run code when it is read.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from mae.errors import CheckpointError
from mae.fileio import atomic_open, read_torch_file
from mae.layout import BEST_CKPT, LAST_CKPT, TRIALS_DIR, TUNE_CHECKPOINT_FILE, ExperimentLayout, TrainLayout

log = logging.getLogger("mae")

CHECKPOINT_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint atomically (mae.fileio), so a crash mid-write never leaves a truncated
    `last.ckpt`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        with atomic_open(path, "wb") as f:
            torch.save(checkpoint, f)


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint as a dict, read with weights_only=True (mae.fileio.read_torch_file)."""
    obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} holds a {type(obj).__name__}, not a state dict")
    return obj


def checkpoint_meta(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Our metadata (stage, arch, num_classes, classes, spec) or {} for checkpoints from elsewhere."""
    hp = ckpt.get("hyper_parameters") or {}
    return hp.get("mae", {}) if isinstance(hp, dict) else {}


def _newest(paths: list[Path]) -> Path | None:
    return max(paths, key=lambda p: p.stat().st_mtime) if paths else None


def find_checkpoint(folder: str | os.PathLike, prefer: str = "best") -> Path | None:
    """The checkpoint a results folder stands for: best (else last, else newest) for prefer='best'; last
    (else newest) for prefer='last'. Looks in the folder, its checkpoints/, train/checkpoints/ and automl/best/."""
    folder = Path(folder)
    candidates = [
        folder,
        TrainLayout(folder).checkpoints,
        TrainLayout(folder / "train").checkpoints,
        ExperimentLayout(folder).best,
        folder / "best",
    ]
    order = [BEST_CKPT, LAST_CKPT] if prefer == "best" else [LAST_CKPT]
    for d in candidates:
        for name in order:
            if (d / name).is_file():
                return d / name
    for d in candidates:
        found = _newest([p for p in d.glob("*") if p.is_file() and p.suffix in CHECKPOINT_SUFFIXES])
        if found:
            return found
    return None


# ------------------------------------------------------------------- AutoML experiments as parents
# An AutoML experiment (`automl run`) keeps <results_dir>/automl/{experiment.json, state.json, best/best.ckpt,
# trials/<trial_id>/}. Its results folder (or its automl/ folder) stands for the best trial's best epoch; a
# trial id inside it (<results_dir>/<trial_id>, <results_dir>/automl/<trial_id> or .../trials/<trial_id>) for
# that trial's best epoch. Read as plain JSON: `mae` does not import `automl`.


def automl_experiment_dir(folder: str | os.PathLike) -> Path | None:
    """The `automl/` folder of an AutoML experiment given its results folder or the automl folder itself."""
    exp = ExperimentLayout.of_folder(Path(folder))
    return exp.root if exp is not None else None


def _automl_trials(exp_dir: Path) -> dict[str, Any]:
    import json

    try:
        return json.loads(ExperimentLayout(exp_dir.parent).state.read_text()).get("trials", {})
    except (OSError, ValueError):
        return {}


def automl_trial_checkpoint(exp_dir: Path, trial_id: str, *, key: str) -> Path:
    """The best epoch's checkpoint of one trial of an AutoML experiment."""
    trials = _automl_trials(exp_dir)
    rec = trials.get(trial_id)
    if rec is None:
        known = ", ".join(sorted(trials)[:12]) or "none yet"
        raise CheckpointError(
            f"{key}: the AutoML experiment {exp_dir} has no trial {trial_id!r} (trials: {known})"
        )
    best = rec.get("best") or {}
    tune_ckpt = best.get("checkpoint")
    if tune_ckpt and (Path(tune_ckpt) / TUNE_CHECKPOINT_FILE).is_file():
        return Path(tune_ckpt) / TUNE_CHECKPOINT_FILE
    trial = TrainLayout(ExperimentLayout(exp_dir.parent).trial_dir(trial_id))
    for path in (trial.best, trial.last):
        if path.is_file():
            return path
    where = f" (its best checkpoint is in the experiment storage: {tune_ckpt})" if tune_ckpt else ""
    raise CheckpointError(
        f"{key}: trial {trial_id!r} of {exp_dir} has no checkpoint on this machine{where}; it reported "
        f"{'no checkpoint' if not tune_ckpt else 'one elsewhere'}"
    )


def _automl_checkpoint(p: Path, key: str) -> Path | None:
    """An AutoML experiment folder -> best/best.ckpt; a trial id inside one -> that trial's; None otherwise."""
    in_trials = p.parent.name == TRIALS_DIR and automl_experiment_dir(p.parent.parent) is not None
    if p.is_dir() and not in_trials:
        exp = automl_experiment_dir(p)
        if exp is None or TrainLayout(p / "train").checkpoints.is_dir():
            return None
        best = ExperimentLayout(exp.parent).best_checkpoint
        if best.is_file():
            log.info("%s: using the best trial's checkpoint of the AutoML experiment %s", key, exp)
            return best
        raise CheckpointError(
            f"{key}={str(p)!r}: the AutoML experiment has no best model yet (its search has not finished); "
            f"give one of its trials instead, e.g. {exp}/<trial_id> (see `automl status {exp.parent}`)"
        )
    parent = p.parent
    if parent.name == TRIALS_DIR:
        parent = parent.parent
    exp = automl_experiment_dir(parent)
    if exp is None:
        return None
    found = automl_trial_checkpoint(exp, p.name, key=key)
    log.info("%s: using trial %s's best checkpoint %s", key, p.name, found)
    return found


def resolve_checkpoint(path: str | os.PathLike, *, key: str, prefer: str = "best") -> Path:
    """A checkpoint file, or the right checkpoint inside a results folder (the choice is logged). An AutoML
    experiment's folder stands for its best trial's best epoch, `<experiment>/<trial_id>` for that trial's."""
    p = Path(os.path.expanduser(str(path)))
    if p.is_file():
        return p
    if prefer == "best":
        found = _automl_checkpoint(p, key)
        if found is not None:
            return found
    if p.is_dir():
        found = find_checkpoint(p, prefer)
        if found is None:
            raise CheckpointError(f"{key}={str(path)!r}: the folder holds no checkpoint (*.ckpt, *.pth)")
        log.info("%s: using %s from results folder %s", key, found.name, p)
        return found
    raise CheckpointError(f"{key}={str(path)!r}: no such file or folder")

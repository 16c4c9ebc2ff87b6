"""Per-epoch recording: status.json (TAO's one-JSON-object-per-line log), MLflow, throughput, and the hook
through which a caller (the AutoML trial) receives each epoch's metrics without `mae` importing `automl`."""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

log = logging.getLogger("mae")

EpochHook = Callable[[int, dict[str, float]], None]
VAL_METRICS = frozenset({"val_loss", "ACC_all", "ACC_top5", "knn_acc"})  # logged by validation only


def unreadable_images(trainer: pl.Trainer) -> tuple[int, str | None]:
    """Images of the run's datasets that could not be read so far: unreadable when indexed, or failing to
    decode in any loader worker of any rank (the union: a file counts once). Returns (count, an example).
    Under DDP every rank must call it (the per-rank lists are gathered)."""
    from mae.data.sources import display_name

    bad: set[str] = set()
    for ds in _run_datasets(trainer):
        bad.update(ds.failed_files)
        bad.update(path for path, _ in ds.skipped_at_index)
    if torch.distributed.is_available() and torch.distributed.is_initialized() and trainer.world_size > 1:
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, sorted(bad))
        bad = {p for part in gathered for p in part or ()}
    return len(bad), (display_name(min(bad)) if bad else None)


def _run_datasets(trainer: pl.Trainer) -> list:
    """The image datasets behind the trainer's train and validation loaders (each once)."""
    from mae.data.loaders import image_datasets

    vals = trainer.val_dataloaders
    loaders = [trainer.train_dataloader, *(vals if isinstance(vals, (list, tuple)) else [vals])]
    found = {}
    for loader in loaders:
        for ds in image_datasets(getattr(loader, "dataset", None)):
            found[id(ds)] = ds
    return list(found.values())


def epoch_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The epoch's logged metrics as plain floats (NaN kept, so a diverged run is visible)."""
    out = {}
    for k, v in trainer.callback_metrics.items():
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
    return out


class StatusLog:
    """Appends TAO-style status lines to <results>/status.json (one JSON object per line, flushed each time)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, status: str, message: str, **extra: Any) -> None:
        now = dt.datetime.now()
        record = {
            "date": now.strftime("%-m/%-d/%Y"),
            "time": now.strftime("%H:%M:%S"),
            "status": status,
            "verbosity": "INFO" if status != "FAILURE" else "ERROR",
            "message": message,
            **extra,
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
            f.flush()


class EpochRecorder(pl.Callback):
    """Measures each epoch (time, images/s, peak memory), then writes status.json, MLflow and the hook."""

    def __init__(
        self,
        status: StatusLog | None,
        sinks=(),
        hook: EpochHook | None = None,
        print_epochs: bool | None = None,
    ):
        self.status = status
        self.sinks = [
            s for s in sinks if s is not None
        ]  # MLflow, W&B: anything with log_metrics(metrics, step)
        self.hook = hook
        self.print_epochs = (not sys.stderr.isatty()) if print_epochs is None else print_epochs
        self._t0 = 0.0
        self._images = 0
        self._validated = False
        self._unreadable_reported = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = time.perf_counter()
        self._images = 0
        self._validated = False
        for ds in _run_datasets(trainer):
            ds.report_after_pass = False  # one line per epoch from here, across workers and ranks
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        imgs = batch[0] if isinstance(batch, (list, tuple)) else batch
        self._images += int(imgs.shape[0])

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        elapsed = time.perf_counter() - self._t0
        metrics = epoch_metrics(trainer)
        if not self._validated:  # Lightning keeps the last validation's values: do not report them again
            metrics = {k: v for k, v in metrics.items() if k not in VAL_METRICS}
        metrics["epoch_time_s"] = elapsed
        metrics["images_per_sec"] = self._images * trainer.world_size / max(elapsed, 1e-9)
        if torch.cuda.is_available():
            metrics["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        epoch = trainer.current_epoch
        unreadable, example = unreadable_images(trainer)  # a collective under DDP: every rank calls it
        if trainer.is_global_zero:
            if unreadable > self._unreadable_reported:
                log.warning(
                    "epoch %d: %d unreadable image(s) so far (replaced by readable ones in training, left out "
                    "of validation), e.g. %s; counted as skipped_images in status.json and MLflow",
                    epoch + 1,
                    unreadable,
                    example,
                )
                self._unreadable_reported = unreadable
            max_epochs = trainer.max_epochs or 0
            shown = {k: round(v, 6) for k, v in metrics.items() if math.isfinite(v)}
            if self.print_epochs:
                log.info(
                    "epoch %d/%d: %s",
                    epoch + 1,
                    max_epochs,
                    ", ".join(f"{k}={v:.4g}" for k, v in sorted(shown.items())),
                )
            if self.status is not None:
                remaining = (max_epochs - epoch - 1) * elapsed
                self.status.write(
                    "RUNNING",
                    "Train metrics generated.",
                    epoch=epoch,
                    max_epoch=max_epochs,
                    time_per_epoch=str(dt.timedelta(seconds=round(elapsed))),
                    eta=str(dt.timedelta(seconds=round(remaining))),
                    kpi=shown,
                    skipped_images=unreadable,
                )
            for sink in self.sinks:
                sink.log_metrics({**metrics, "skipped_images": float(unreadable)}, step=epoch)
        if self.hook is not None:
            self.hook(epoch, metrics)

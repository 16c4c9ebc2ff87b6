"""From a spec to a finished training run: devices, strategy, precision, checkpoints, resume, recording.

    result = run_training(cfg, on_epoch=hook)   # hook(epoch, metrics) after every epoch

Without a GPU the run uses the CPU (one notice line); `train.num_gpus: N > 1` then runs N CPU processes with
gloo DDP, so the multi-process path is testable anywhere.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

from mae.config import ExperimentConfig
from mae.engine.callbacks import EpochHook, EpochRecorder, StatusLog
from mae.engine.checkpoints import (
    AtomicCheckpointIO,
    checkpoint_meta,
    load_checkpoint_file,
    resolve_checkpoint,
)
from mae.engine.speed import plan_speed, prepare_network
from mae.errors import CheckpointError, ConfigError
from mae.layout import EPOCH_CKPT_PATTERN, LAST_CKPT, STEP_CKPT_PATTERN, TrainLayout
from mae.metrics import MAXIMIZED

log = logging.getLogger("mae")

PRECISION = {"fp32": "32-true", "fp16": "16-mixed", "bf16": "bf16-mixed"}


@dataclass
class TrainResult:
    results_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    monitor: str
    best_score: float | None
    metrics: dict[str, float] = field(default_factory=dict)  # the last epoch's
    classes: list[str] | None = None


@dataclass
class DevicePlan:
    accelerator: str
    devices: Any
    num_nodes: int
    strategy: Any
    precision: str
    plugins: list[Any] | None = None  # None: the default (atomic checkpoint writes on one device)


def plan_devices(cfg: ExperimentConfig) -> DevicePlan:
    """Map num_gpus / gpu_ids / num_nodes / distributed_strategy / precision onto Lightning."""
    t = cfg.train
    precision = t.resolved_precision()
    # Multi-node launchers (TAO's orchestrator) give the per-node GPU count in the environment.
    num_gpus = int(os.environ.get("NUM_GPU_PER_NODE", t.num_gpus))
    gpu_ids = t.gpu_ids if num_gpus == t.num_gpus else list(range(num_gpus))
    if torch.cuda.is_available():
        available = torch.cuda.device_count()
        bad = [i for i in gpu_ids if i >= available]
        if bad:
            raise ConfigError(
                f"train.gpu_ids={gpu_ids}: this machine has {available} GPU(s) (ids 0..{available - 1})"
            )
        accelerator, devices = "gpu", list(gpu_ids)
    else:
        accelerator, devices = "cpu", num_gpus
        log.info(
            "no GPU found: training on the CPU%s",
            f" with {num_gpus} processes (gloo DDP)" if num_gpus > 1 else "",
        )
        if precision == "fp16":
            log.warning("train.precision=fp16 needs a GPU; using bf16 mixed precision on the CPU")
            precision = "bf16"
    world = num_gpus * t.num_nodes
    if world == 1:
        strategy: Any = "auto"
    elif t.distributed_strategy == "fsdp" and accelerator == "gpu":
        from pytorch_lightning.strategies import FSDPStrategy

        strategy = FSDPStrategy(checkpoint_io=AtomicCheckpointIO())
    else:
        from pytorch_lightning.strategies import DDPStrategy

        if t.distributed_strategy == "fsdp":
            log.warning("train.distributed_strategy=fsdp needs GPUs; using ddp on the CPU")
        # spawn, not Lightning's default re-launch of the script: works from any entry point (CLI, tests, Ray)
        strategy = DDPStrategy(
            find_unused_parameters=True,
            start_method="spawn" if accelerator == "cpu" else "popen",
            process_group_backend="gloo" if accelerator == "cpu" else None,
            checkpoint_io=AtomicCheckpointIO(),
        )
    return DevicePlan(accelerator, devices, t.num_nodes, strategy, PRECISION[precision])


def apply_cudnn(cfg: ExperimentConfig) -> None:
    torch.backends.cudnn.benchmark = cfg.train.cudnn.benchmark
    torch.backends.cudnn.deterministic = cfg.train.cudnn.deterministic


def build_network(cfg: ExperimentConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The network for train.stage and the metadata stored with its checkpoints."""
    from mae.models import build_classifier, build_mae

    m, size = cfg.model, cfg.dataset.augmentation.input_size
    meta = {"stage": cfg.train.stage, "arch": m.arch, "img_size": size}
    if cfg.train.stage == "pretrain":
        net = build_mae(
            m.arch,
            img_size=size,
            mask_ratio=cfg.train.mask_ratio,
            norm_pix_loss=cfg.train.norm_pix_loss,
            decoder_depth=m.decoder_depth,
            decoder_embed_dim=m.decoder_embed_dim,
        )
        meta.update(
            decoder_depth=m.resolved_decoder_depth(),
            decoder_embed_dim=m.decoder_embed_dim,
            norm_pix_loss=cfg.train.norm_pix_loss,
        )
    else:
        net = build_classifier(
            m.arch, m.num_classes, img_size=size, drop_path_rate=m.drop_path_rate, global_pool=m.global_pool
        )
        meta.update(num_classes=m.num_classes, global_pool=m.global_pool)
    return net, meta


def find_resume(cfg: ExperimentConfig, results_dir: Path) -> Path | None:
    """resume_training_checkpoint_path (a file or folder), else the latest checkpoint in this results folder."""
    explicit = cfg.train.resume_training_checkpoint_path
    if explicit:
        return resolve_checkpoint(explicit, key="train.resume_training_checkpoint_path", prefer="last")
    last = TrainLayout(results_dir).last
    return last if last.is_file() else None


def _check_resume_matches(path: Path, cfg: ExperimentConfig) -> None:
    meta = checkpoint_meta(load_checkpoint_file(path))
    if not meta:
        raise CheckpointError(
            f"{path} is not a checkpoint of this tool's training runs, so it cannot be resumed; "
            "use train.pretrained_model_path to start from its weights"
        )
    for key, want in (("stage", cfg.train.stage), ("arch", cfg.model.arch)):
        if meta.get(key) != want:
            raise CheckpointError(
                f"cannot resume from {path}: it is a {meta.get(key)} checkpoint but the spec says {key}={want}; "
                "use another results_dir or set train.resume_training_checkpoint_path"
            )


def run_training(
    cfg: ExperimentConfig,
    *,
    on_epoch: EpochHook | None = None,
    mlflow: bool = True,
    run_name: str | None = None,
    enable_progress_bar: bool | None = None,
    callbacks: list[pl.Callback] | None = None,
    device_plan: DevicePlan | None = None,
) -> TrainResult:
    """Train per the spec; returns where the checkpoints are and the final metrics.

    on_epoch(epoch, metrics) runs after every epoch on rank 0 (the AutoML trial reports through it);
    mlflow=False leaves tracking to the caller; callbacks are extra Lightning callbacks; device_plan replaces
    plan_devices(cfg) (the AutoML runner passes Ray Train's strategy and environment for multi-worker trials)."""
    from mae.data import build_eval_transform
    from mae.engine import data as D
    from mae.engine.modules import FinetuneModule, NonFiniteLossError, PretrainModule

    t = cfg.train
    results_dir = Path(cfg.action_results_dir("train")).resolve()
    results_dir.mkdir(parents=True, exist_ok=True)
    status = StatusLog(TrainLayout(results_dir).status)
    apply_cudnn(cfg)
    pl.seed_everything(t.seed, workers=True, verbose=False)

    # data: uint8 from the loader workers, augmentation finished on the device (see D.training_pipeline)
    aug = cfg.dataset.augmentation
    classes = None
    speed = plan_speed(cfg, cuda=torch.cuda.is_available())
    pipeline = D.training_pipeline(cfg, cuda=torch.cuda.is_available(), channels_last=speed.channels_last)
    log.info("training images: %s", pipeline.description)
    if t.stage == "pretrain":
        train_ds = D.ssl_dataset(
            cfg.dataset.train_data_sources, "dataset.train_data_sources", pipeline.transform
        )
    else:
        train_ds, classes = D.class_dataset(
            cfg.dataset.train_data_sources, "dataset.train_data_sources", pipeline.transform
        )
        D.check_num_classes(cfg, classes, "dataset.train_data_sources")
        D.save_classes(classes, results_dir)
    if cfg.dataset.store:
        D.use_decoded_store(train_ds, cfg)
    val_ds = None
    if cfg.dataset.val_data_sources:
        val_ds, _ = D.class_dataset(
            cfg.dataset.val_data_sources,
            "dataset.val_data_sources",
            build_eval_transform(aug),
            classes=classes,
            on_error="drop",  # a broken val image is left out, not replaced by (and counted as) another
        )

    # model
    network, meta = build_network(cfg)
    meta["classes"] = classes
    resume = find_resume(cfg, results_dir)
    if resume is not None:
        _check_resume_matches(resume, cfg)
        log.info("resuming from %s", resume)
    elif t.stage == "finetune":
        if t.pretrained_model_path:
            from mae.models import load_weights

            path = resolve_checkpoint(t.pretrained_model_path, key="train.pretrained_model_path")
            report = load_weights(network, str(path), expect="encoder")
            log.info("loaded pretrained weights from %s (%s)", path, report)
        else:
            log.warning("finetuning from scratch: train.pretrained_model_path is not set")
    module_cls = PretrainModule if t.stage == "pretrain" else FinetuneModule
    module = module_cls(cfg, network, meta)
    module.batch_augment, module.speed = pipeline.batch_augment, speed
    prepare_network(network, speed)

    plan = device_plan or plan_devices(cfg)
    monitor = t.optim.monitor_name
    mode = "max" if monitor in MAXIMIZED else "min"
    ckpt_dir = TrainLayout(results_dir).checkpoints
    every = (
        {"every_n_epochs": t.checkpoint_interval}
        if t.checkpoint_interval_unit == "epoch"
        else {"every_n_train_steps": t.checkpoint_interval}
    )
    periodic = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename=EPOCH_CKPT_PATTERN if t.checkpoint_interval_unit == "epoch" else STEP_CKPT_PATTERN,
        auto_insert_metric_name=False,
        save_top_k=-1,
        save_last=True,
        enable_version_counter=False,
        **every,
    )
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor=monitor,
        mode=mode,
        save_top_k=1,
        enable_version_counter=False,
        auto_insert_metric_name=False,
    )
    name = run_name or f"train-{t.stage}"
    tracker = None
    if mlflow:
        from mae.tracking import RunLogger, flat_params

        tracker = RunLogger(
            cfg.results_dir,
            cfg.model_name,
            name,
            tags={"stage": t.stage, "arch": cfg.model.arch, "results_dir": str(results_dir)},
        )
        tracker.log_params(flat_params(cfg.model_dump(mode="json")))
    from mae.tracking import WandbRun

    sinks = [s for s in (tracker, WandbRun.start(cfg, name, results_dir)) if s is not None]
    recorder = EpochRecorder(status, sinks, on_epoch)
    if enable_progress_bar is None:
        enable_progress_bar = sys.stderr.isatty()
    trainer = pl.Trainer(
        accelerator=plan.accelerator,
        devices=plan.devices,
        num_nodes=plan.num_nodes,
        strategy=plan.strategy,
        precision=plan.precision,
        max_epochs=t.num_epochs,
        accumulate_grad_batches=t.accum_grad_batches,
        check_val_every_n_epoch=t.validation_interval,
        callbacks=[periodic, best, recorder, *(callbacks or [])],
        default_root_dir=results_dir,
        logger=False,
        enable_progress_bar=enable_progress_bar,
        enable_model_summary=False,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        plugins=plan.plugins
        if plan.plugins is not None
        else ([AtomicCheckpointIO()] if plan.strategy == "auto" else None),
        deterministic=t.cudnn.deterministic and plan.accelerator == "gpu",
    )
    status.write("STARTED", f"Starting {t.stage} training.", max_epoch=t.num_epochs)
    try:
        trainer.fit(
            module,
            datamodule=_RankLoaders(train_ds, val_ds, cfg, pipeline.collate_fn),
            ckpt_path=str(resume) if resume else None,
        )
    except BaseException as e:
        message = str(e) if isinstance(e, NonFiniteLossError) else f"{type(e).__name__}: {e}"
        status.write("FAILURE", message)
        if tracker:
            tracker.set_tags({"failure": message[:500]})
        for sink in sinks:
            sink.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    from mae.engine.callbacks import epoch_metrics

    metrics = epoch_metrics(trainer)
    best_path = Path(best.best_model_path) if best.best_model_path else None
    last_path = ckpt_dir / LAST_CKPT
    best_score = float(best.best_model_score) if best.best_model_score is not None else None
    status.write("SUCCESS", "Training finished successfully.", kpi=metrics)
    if tracker:
        tracker.set_tags({"best_checkpoint": str(best_path), "monitor": monitor})
        if best_score is not None:
            tracker.log_metrics({f"best_{monitor}": best_score}, step=t.num_epochs)
    for sink in sinks:
        sink.finish("FINISHED")
    log.info("training finished: best %s=%s at %s", monitor, best_score, best_path)
    return TrainResult(
        results_dir,
        best_path,
        last_path if last_path.is_file() else None,
        monitor,
        best_score,
        metrics,
        classes,
    )


class _RankLoaders(pl.LightningDataModule):
    """Loaders built inside each process (after DDP starts), so each rank gets its own shard of the seeded
    permutation."""

    def __init__(self, train_ds, val_ds, cfg: ExperimentConfig, train_collate=None):
        super().__init__()
        self.train_ds, self.val_ds, self.cfg = train_ds, val_ds, cfg
        self.train_collate = train_collate

    def train_dataloader(self):
        from mae.engine.data import make_loader

        return make_loader(
            self.train_ds,
            self.cfg,
            train=True,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
            collate_fn=self.train_collate,
        )

    def val_dataloader(self):
        from mae.engine.data import make_loader

        if self.val_ds is None:
            return []
        return make_loader(
            self.val_ds,
            self.cfg,
            train=False,
            rank=self.trainer.global_rank,
            world_size=self.trainer.world_size,
        )

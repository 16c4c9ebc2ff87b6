"""Lightning modules for MAE pretraining and finetuning.

Both keep the network as the attribute `model`, so checkpoint keys are `model.<official MAE key>` and
`mae.models.load_weights` reads them without Lightning. Randomness is re-seeded from (seed, epoch, batch, rank)
at every training step (masks, drop path, mixup), and the data pipeline seeds each sample from
(seed, epoch, index): a run resumed at an epoch boundary continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import math
import random
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from mae.config import ExperimentConfig
from mae.engine.schedule import lr_factor_fn
from mae.errors import ConfigError, MAEError


class NonFiniteLossError(MAEError):
    """The loss became NaN or infinite: the run stops and records a failure."""


def step_seed(seed: int, epoch: int, batch_idx: int, rank: int) -> int:
    """A well-mixed 63-bit seed for one training step (a hash, so neighbouring steps are unrelated)."""
    h = np.random.SeedSequence([seed, epoch, batch_idx, rank]).generate_state(2, np.uint32)
    return int(h[0]) << 31 ^ int(h[1])


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def optimizer_groups(cfg: ExperimentConfig, model: torch.nn.Module) -> list[dict]:
    """The spec's parameter groups: no decay on norms/biases/tokens, layer decay when finetuning, the encoder's
    lr scaled by backbone_multiplier; frozen parameters left out."""
    from mae.models import param_groups

    o = cfg.train.optim
    return param_groups(
        model,
        weight_decay=o.weight_decay,
        layer_decay=o.layer_decay if cfg.train.stage == "finetune" else None,
        lr=o.lr,
        backbone_multiplier=o.backbone_multiplier,
    )


def build_optimizer(
    cfg: ExperimentConfig, model: torch.nn.Module, *, total_steps: int, num_epochs: int, fused: bool = False
):
    """AdamW (betas (momentum, 0.95)) over the model's parameter groups, and the per-step schedule.

    Groups: no decay on norms/biases/tokens; layer-wise lr decay when finetuning; the encoder's lr scaled by
    backbone_multiplier; frozen parameters left out. fused: PyTorch's fused AdamW kernel (the engine's
    choice on CUDA; same update, see mae.engine.speed)."""
    o = cfg.train.optim
    groups = optimizer_groups(cfg, model)
    if not groups:
        raise ConfigError("train.freeze: every parameter is frozen; nothing would train")
    opt = torch.optim.AdamW(groups, lr=o.lr, betas=(o.momentum, 0.95), **({"fused": True} if fused else {}))
    factor = lr_factor_fn(
        o.lr_scheduler,
        total_steps=total_steps,
        steps_per_epoch=max(1, math.ceil(total_steps / max(1, num_epochs))),
        warmup_epochs=o.warmup_epochs,
        milestones=o.milestones,
        gamma=o.gamma,
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class _Base(pl.LightningModule):
    """What both stages share: optimizer, schedule, freezing, per-step seeding, the NaN guard."""

    # set by the trainer: the batch end of the input pipeline (uint8 -> normalised on the device; None: the
    # batches arrive normalised) and the step's speed-ups (mae.engine.speed)
    batch_augment: Any = None
    speed: Any = None

    def __init__(self, cfg: ExperimentConfig, network: torch.nn.Module, meta: dict[str, Any]):
        super().__init__()
        self.cfg = cfg
        self.model = network
        # plain data only, so checkpoints load with weights_only=True
        self.save_hyperparameters({"mae": {**meta, "spec": cfg.model_dump(mode="json")}})
        self._apply_freeze()

    # ------------------------------------------------------------------ setup
    def _apply_freeze(self) -> None:
        prefixes = self.cfg.train.freeze
        if not prefixes:
            return
        names = [n for n, _ in self.model.named_parameters()]
        unknown = [p for p in prefixes if not any(n == p or n.startswith(p + ".") for n in names)]
        if unknown:
            tops = sorted({n.split(".")[0] for n in names})
            raise ConfigError(
                f"train.freeze: {unknown} match no parameter of {self.cfg.model.arch}; "
                f"prefixes start with one of: {', '.join(tops)}"
            )
        for n, p in self.model.named_parameters():
            if any(n == q or n.startswith(q + ".") for q in prefixes):
                p.requires_grad_(False)

    def configure_optimizers(self):
        total = max(1, int(self.trainer.estimated_stepping_batches))
        fused = self.speed is not None and self.speed.fused_adamw and self.device.type == "cuda"
        opt, sched = build_optimizer(
            self.cfg, self.model, total_steps=total, num_epochs=self.trainer.max_epochs, fused=fused
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def on_train_start(self) -> None:
        if self.trainer.ckpt_path:
            self.reapply_optimizer_settings()
        if self.speed is not None and self.speed.check_attention and self.device.type == "cuda":
            self._check_attention()

    def _check_attention(self) -> None:
        import logging

        from mae.engine.speed import check_fast_attention

        precision = self.cfg.train.resolved_precision()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        size = self.cfg.dataset.augmentation.input_size
        why = check_fast_attention(self.model, size, self.device, dtype)
        if why:
            logging.getLogger("mae").warning(
                "attention of %s in %s falls back to the slow math kernel: %s",
                self.cfg.model.arch,
                precision,
                why,
            )
        else:
            logging.getLogger("mae").info(
                "attention: flash/memory-efficient kernels serve every block (%s)", precision
            )

    def reapply_optimizer_settings(self) -> list[str]:
        """After resuming from a checkpoint, train with the spec's optimizer settings (lr, weight decay,
        momentum) rather than those restored with the optimizer state: a Tune trial restored from another
        trial's checkpoint by PBT carries a mutated learning rate. Unchanged settings are left untouched, so a
        plain resume continues exactly. Returns the settings that changed (for the log)."""

        o = self.cfg.train.optim
        opt = self.optimizers()
        opt = getattr(opt, "optimizer", opt)
        sched = self.lr_schedulers()
        # param_groups already leaves frozen parameters out
        fresh = optimizer_groups(self.cfg, self.model)
        if len(fresh) != len(opt.param_groups):
            return []
        changed: set[str] = set()
        for i, (group, new) in enumerate(zip(opt.param_groups, fresh, strict=True)):
            base = sched.base_lrs[i] if sched is not None else group.get("initial_lr", group["lr"])
            if base != new["lr"]:
                changed.add("lr")
                if sched is not None:
                    sched.base_lrs[i] = new["lr"]
                    factor = sched.lr_lambdas[i](sched.last_epoch)
                else:
                    factor = group["lr"] / base if base else 1.0
                group["initial_lr"] = new["lr"]
                group["lr"] = new["lr"] * factor
            if group.get("weight_decay") != new["weight_decay"]:
                changed.add("weight_decay")
                group["weight_decay"] = new["weight_decay"]
            betas = (o.momentum, group["betas"][1])
            if tuple(group["betas"]) != betas:
                changed.add("momentum")
                group["betas"] = betas
        if changed:
            import logging

            logging.getLogger("mae").info(
                "resumed with the spec's optimizer settings (changed since the checkpoint: %s)",
                ", ".join(sorted(changed)),
            )
        return sorted(changed)

    # ---------------------------------------------------------------- helpers
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        seed_all(step_seed(self.cfg.train.seed, self.current_epoch, batch_idx, self.global_rank))

    def _train_images(self, batch: Any) -> torch.Tensor:
        """The batch's images, augmentation finished on the device (after the step's seeding, so random
        erasing is reproducible on resume)."""
        imgs = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self.batch_augment(imgs) if self.batch_augment is not None else imgs

    def _train_loss(self, loss: torch.Tensor, batch_size: int) -> torch.Tensor:
        """Stop on a non-finite loss, log train_loss (per epoch, under exactly that name) and the lr."""
        self._check_finite(loss)
        self.log(
            "train_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=batch_size,
        )
        self._log_lr()
        return loss

    def _check_finite(self, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise NonFiniteLossError(
                f"loss became {loss.item()} at epoch {self.current_epoch}, step {self.global_step}: training "
                "diverged; lower train.optim.lr, add warmup (train.optim.warmup_epochs) or use fp32"
            )

    def _log_lr(self) -> None:
        opt = self.optimizers()
        if not isinstance(opt, list):
            lrs = [g["lr"] / g.get("lr_scale", 1.0) for g in opt.param_groups]
            self.log("lr", max(lrs), on_step=False, on_epoch=True, sync_dist=False)


class PretrainModule(_Base):
    """Masked reconstruction. Logs train_loss (per epoch); with a labelled val set also val_loss and knn_acc."""

    def training_step(self, batch, batch_idx):
        imgs = self._train_images(batch)
        loss, _, _ = self.model(imgs, mask_ratio=self.cfg.train.mask_ratio)
        return self._train_loss(loss, imgs.shape[0])

    def on_validation_epoch_start(self) -> None:
        self._feats: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []

    def validation_step(self, batch, batch_idx):
        imgs, labels = batch[0], batch[1]
        # a fixed mask per batch, so val_loss compares epochs and trials on the same masks
        g = torch.Generator(device="cpu").manual_seed(self.cfg.train.seed * 1_000_003 + batch_idx)
        noise = torch.rand(imgs.shape[0], self.model.num_mask_units, generator=g).to(imgs.device)
        loss, _, _ = self.model(imgs, mask_ratio=self.cfg.train.mask_ratio, noise=noise)
        self.log(
            "val_loss",
            loss,
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            sync_dist=True,
            batch_size=imgs.shape[0],
        )
        self._feats.append(self.model.forward_features(imgs).float())
        self._labels.append(labels)

    def on_validation_epoch_end(self) -> None:
        from mae.engine.knn import knn_accuracy

        if not self._feats:
            return
        feats = torch.cat(self._feats)
        labels = torch.cat(self._labels)
        if self.trainer.world_size > 1:
            feats = self.all_gather(feats).flatten(0, 1)
            labels = self.all_gather(labels).flatten(0, 1)
        if len(labels) >= 2:
            self.log("knn_acc", knn_accuracy(feats, labels), prog_bar=True, rank_zero_only=True)
        self._feats, self._labels = [], []


class FinetuneModule(_Base):
    """Classification. Logs train_loss; with a val set also val_loss, ACC_all (top-1) and ACC_top5."""

    def __init__(self, cfg: ExperimentConfig, network: torch.nn.Module, meta: dict[str, Any]):
        super().__init__(cfg, network, meta)
        from mae.data import build_mixup

        self.mixup = build_mixup(cfg.dataset.augmentation, cfg.model.num_classes)
        self.smoothing = cfg.dataset.augmentation.smoothing

    def training_step(self, batch, batch_idx):
        imgs, targets = self._train_images(batch), batch[1]
        if self.mixup is not None and imgs.shape[0] % 2 == 0:
            imgs, soft = self.mixup(imgs, targets)  # soft targets include label smoothing
            loss = torch.sum(-soft * F.log_softmax(self.model(imgs), dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(self.model(imgs), targets, label_smoothing=self.smoothing)
        return self._train_loss(loss, imgs.shape[0])

    def validation_step(self, batch, batch_idx):
        imgs, targets = batch[0], batch[1]
        logits = self.model(imgs)
        loss = F.cross_entropy(logits, targets)
        k = min(5, logits.shape[1])
        topk = logits.topk(k, dim=1).indices
        top1 = (topk[:, 0] == targets).float().mean()
        top5 = (topk == targets[:, None]).any(dim=1).float().mean()
        n = imgs.shape[0]
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("ACC_all", top1, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=n)
        self.log("ACC_top5", top5, on_epoch=True, sync_dist=True, batch_size=n)

"""What the evaluate and inference actions share: loading the model they name, their results folder and
status.json, the device, the evaluation transform at the model's own size and normalisation, and the loops."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mae.config import ExperimentConfig
from mae.layout import STATUS_FILE

log = logging.getLogger("mae")


def pick_device(section) -> torch.device:
    """The action's first GPU id when a GPU exists, else the CPU. Evaluation runs on one device."""
    if section.num_gpus > 1 or section.num_nodes > 1:
        log.info("evaluation runs on one device (gpu_ids[0]); num_gpus/num_nodes above 1 do not speed it up")
    if torch.cuda.is_available():
        return torch.device("cuda", section.gpu_ids[0])
    return torch.device("cpu")


def batch_size(cfg: ExperimentConfig, section) -> int:
    return section.batch_size if section.batch_size > 0 else cfg.dataset.batch_size


def eval_aug(cfg: ExperimentConfig, loaded):
    """The spec's evaluation transform settings at the model's input size and normalisation."""
    from mae.actions.loading import normalisation

    mean, std = normalisation(loaded, cfg)
    return cfg.dataset.augmentation.model_copy(
        update={"input_size": loaded.img_size, "mean": mean, "std": std}
    )


@dataclass
class ActionRun:
    loaded: Any  # mae.models.loaded.LoadedModel
    out: Path
    status: Any  # mae.engine.callbacks.StatusLog
    device: torch.device
    transform: Any
    batch_size: int


def start_action(cfg: ExperimentConfig, action: str) -> ActionRun:
    """Load the model `<action>.checkpoint` / `trt_engine` names (its stage must match train.stage) and open
    the action's results folder with a STARTED line in its status.json."""
    from mae.actions.loading import load_for_action
    from mae.data import build_eval_transform
    from mae.engine.callbacks import StatusLog

    section = getattr(cfg, action)
    loaded = load_for_action(cfg, section, action, stage=cfg.train.stage)
    out = Path(cfg.action_results_dir(action))
    out.mkdir(parents=True, exist_ok=True)
    status = StatusLog(out / STATUS_FILE)
    status.write("STARTED", f"{action} with {loaded.path}.")
    return ActionRun(
        loaded,
        out,
        status,
        pick_device(section),
        build_eval_transform(eval_aug(cfg, loaded)),
        batch_size(cfg, section),
    )


def eval_loader(dataset, cfg: ExperimentConfig, bs: int):
    from mae.engine.data import make_loader

    return make_loader(dataset, cfg, train=False, batch_size=bs)


@torch.no_grad()
def classifier_outputs(net, loader, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(logits, second item of each batch: labels or paths) per batch."""
    net.to(device).eval()
    for batch in loader:
        yield net(batch[0].to(device)).float().cpu(), batch[1]


@torch.no_grad()
def classification_metrics(net, loader, device, num_classes: int) -> dict:
    total, loss_sum, top1, top5 = 0, 0.0, 0, 0
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for logits, labels in classifier_outputs(net, loader, device):
        labels = labels.long()
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        topk = logits.topk(min(5, num_classes), dim=1).indices
        top1 += int((topk[:, 0] == labels).sum())
        top5 += int((topk == labels[:, None]).any(dim=1).sum())
        confusion += torch.bincount(labels * num_classes + topk[:, 0], minlength=num_classes**2).view(
            num_classes, num_classes
        )
        total += len(labels)
    return {
        "val_loss": loss_sum / total,
        "ACC_all": top1 / total,
        "ACC_top5": top5 / total,
        "num_images": total,
        "confusion": confusion,
    }


@torch.no_grad()
def reconstruction_loss(net, loader, device, mask_ratio: float, seed: int) -> dict:
    """Mean masked-patch loss with masks fixed by `seed`, so checkpoints compare on the same masks."""
    net.to(device).eval()
    total, loss_sum = 0, 0.0
    for i, batch in enumerate(loader):
        imgs = (batch[0] if isinstance(batch, (list, tuple)) else batch).to(device)
        g = torch.Generator().manual_seed(seed * 1_000_003 + i)
        noise = torch.rand(imgs.shape[0], net.num_mask_units, generator=g).to(device)
        loss, _, _ = net(imgs, mask_ratio=mask_ratio, noise=noise)
        loss_sum += float(loss) * imgs.shape[0]
        total += imgs.shape[0]
    return {"reconstruction_loss": loss_sum / total, "num_images": total}


def save_confusion_png(confusion: torch.Tensor, classes: list[str], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    fig, ax = plt.subplots(figsize=(max(4, n * 0.5 + 2), max(4, n * 0.5 + 1.5)))
    im = ax.imshow(confusion.numpy(), cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90 if n > 10 else 0)
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                v = int(confusion[i, j])
                if v:
                    ax.text(
                        j,
                        i,
                        str(v),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if v > confusion.max() / 2 else "black",
                    )
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

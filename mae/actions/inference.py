"""mae inference: results.csv for a classifier; original | masked | reconstruction grids for an MAE."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from mae.config import ExperimentConfig

log = logging.getLogger("mae")
GRID_ROWS = 8  # images per reconstruction grid


def run(cfg: ExperimentConfig) -> dict:
    from mae.actions.common import eval_loader, start_action
    from mae.data import ImageListDataset
    from mae.engine.data import resolve_sources

    ctx = start_action(cfg, "inference")
    loaded, out, status = ctx.loaded, ctx.out, ctx.status
    roots = resolve_sources(cfg.dataset.test_data_sources, "dataset.test_data_sources")
    loader = eval_loader(ImageListDataset(roots, ctx.transform), cfg, ctx.batch_size)
    if loaded.stage == "finetune":
        result = _classify(loaded, loader, ctx.device, out)
    else:
        result = _reconstruct(loaded, loader, ctx.device, out, cfg)
    status.write("SUCCESS", "Inference finished successfully.", kpi={"num_images": result["num_images"]})
    print(f"inference: {result['num_images']} images -> {result['output']}")
    return result


@torch.no_grad()
def _classify(loaded, loader, device, out: Path) -> dict:
    from mae.actions.common import classifier_outputs
    from mae.fileio import atomic_open

    classes = loaded.classes or [str(i) for i in range(loaded.network.num_classes)]
    path = out / "results.csv"
    n = 0
    with atomic_open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "class_name", "class_index", "score"])
        for logits, paths in classifier_outputs(loaded.network, loader, device):
            probs = logits.softmax(dim=1)
            score, idx = probs.max(dim=1)
            for p, i, sc in zip(paths, idx.tolist(), score.tolist(), strict=True):
                w.writerow([p, classes[i], i, f"{sc:.6f}"])
                n += 1
    return {"num_images": n, "output": str(path)}


@torch.no_grad()
def _reconstruct(loaded, loader, device, out: Path, cfg: ExperimentConfig) -> dict:
    """Grids of GRID_ROWS images: original | masked input | reconstruction (visible patches pasted back)."""
    from torchvision.utils import save_image

    net = loaded.network.to(device).eval()
    from mae.actions.loading import normalisation

    mean, std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in normalisation(loaded, cfg))
    grids = out / "reconstructions"
    grids.mkdir(exist_ok=True)
    n, k = 0, 0
    for i, (imgs, _paths) in enumerate(loader):
        imgs = imgs.to(device)
        g = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + i)
        noise = torch.rand(imgs.shape[0], net.num_mask_units, generator=g).to(device)
        _, pred, mask = net(imgs, mask_ratio=cfg.train.mask_ratio, noise=noise)
        recon, pixel_mask = _to_pixels(net, imgs, pred, mask)
        panels = [imgs, imgs * (1 - pixel_mask), recon * pixel_mask + imgs * (1 - pixel_mask)]
        panels = [(p * std + mean).clamp(0, 1) for p in panels]
        for start in range(0, imgs.shape[0], GRID_ROWS):
            rows = torch.stack([p[start : start + GRID_ROWS] for p in panels], dim=1).flatten(0, 1)
            save_image(rows, grids / f"grid_{k:04d}.png", nrow=3, padding=2)
            k += 1
        n += imgs.shape[0]
    return {"num_images": n, "output": str(grids)}


def _to_pixels(net, imgs, pred, mask):
    """The prediction as an image in the input's normalisation, and the mask as a pixel map (1 = masked).

    With norm_pix_loss the network predicts per-patch normalised pixels; they are de-normalised with the
    statistics of the true patch, which is how MAE's own visualisation shows them."""
    if getattr(net, "norm_pix_loss", False):
        target = net.patchify(imgs)  # [N, P, p*p*C]
        mu = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        pred = pred * (var + 1e-6) ** 0.5 + mu
    return net.unpatchify(pred), net.mask_to_pixels(mask).to(imgs.dtype)

"""The batch end of the training input pipeline: uint8 batches in, normalised float batches out, on the device.

The engine's training loaders carry uint8 pixels (a quarter of float32's bytes through worker queues,
shared memory, pinned buffers and the host-to-device copy) and finish the augmentation on the batch,
after it reached the device (`BatchAugment`, called from the Lightning module's `on_after_batch_transfer`):

    CPU crop path (any device)   workers: crop + resize + flip (+ jitter, auto_aug) -> uint8 [3, S, S]
                                 batch:   normalise, random erasing (`re_prob`), channels_last if asked
    device crop path (CUDA)      workers: sample the crop and the flip, slice the stored bytes -> `Regions`
                                 batch:   resize every crop (`resize_regions`), flip, normalise, erasing

The device path leaves the CPU nothing but slicing the decoded store (`mae.data.store`): it is taken on CUDA
for pipelines without per-image PIL operations (MAE pretraining's: crop, flip; `colour_jitter` and
`auto_aug` keep the CPU path). Both paths draw the same random numbers in the same order for a sample
(`sample_crop`, the interpolation, the flip), so they crop the same boxes; they differ only in the resize
kernel (torch's antialiased uint8 kernel on the CPU; bilinear ROI-align with adaptive sampling, or
per-crop antialiased interpolation for bicubic, on the device).

Random erasing runs here, on normalised values as timm's `RandomErasing` expects (same probability,
one box, per-pixel normal noise), drawn from the training step's seeded generators.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mae.data.transforms import StoredResizedCrop

_MODES = ("bilinear", "bicubic")


class Regions(NamedTuple):
    """A batch of crops still to be resized (the device path). Lightning and the DataLoader's pinning move
    named tuples of tensors as a whole."""

    pixels: torch.Tensor  # uint8 [N, Hmax, Wmax, 3]: crop i in pixels[i, :h_i, :w_i], zero padding after
    sizes: torch.Tensor  # int64 [N, 2]: (h_i, w_i)
    flips: torch.Tensor  # bool [N]: mirror crop i
    modes: torch.Tensor  # int64 [N]: index into ("bilinear", "bicubic")


class ToUint8Tensor:
    """PIL RGB image (or uint8 [3, H, W] tensor) -> uint8 [3, H, W] tensor: the last per-image step of the
    engine's training transforms; normalising is left to `BatchAugment`."""

    def __call__(self, img: Any) -> torch.Tensor:
        if isinstance(img, torch.Tensor):
            if img.dtype != torch.uint8 or img.ndim != 3 or img.shape[0] != 3:
                raise TypeError(
                    f"ToUint8Tensor expects a uint8 [3, H, W] tensor, got {img.dtype} {tuple(img.shape)}"
                )
            return img
        rgb = img.convert("RGB") if img.mode != "RGB" else img
        return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class StoredCropRegion:
    """The device path's per-image step: the crop of a stored image (uint8 H x W x 3 array) that
    `StoredResizedCrop` would take, with the same draws, left unresized: returns (uint8 [h, w, 3] tensor,
    int64 [flip, interpolation index]) for `collate_regions`."""

    def __init__(self, crop: StoredResizedCrop):
        self.crop = crop

    def __call__(self, arr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        top, left, h, w, mode, flip = self.crop.draw(arr.shape[0], arr.shape[1])
        region = torch.from_numpy(np.array(arr[top : top + h, left : left + w]))
        return region, torch.tensor([int(flip), _MODES.index(mode)])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.crop!r})"


def collate_regions(batch: Sequence[Any]) -> Any:
    """Collate `((region, flags), target)` samples into `(Regions, targets)`; None samples (dropped) are
    left out, None when none is left (as `collate_skip_none`)."""
    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    regions = [b[0][0] for b in kept]
    hmax = max(r.shape[0] for r in regions)
    wmax = max(r.shape[1] for r in regions)
    pixels = torch.zeros((len(regions), hmax, wmax, 3), dtype=torch.uint8)
    for i, r in enumerate(regions):
        h, w = r.shape[:2]
        pixels[i, :h, :w] = r
        # edge pixels repeated once: bilinear sampling at a crop's last half pixel reads one beyond it
        if w < wmax:
            pixels[i, :h, w] = r[:, w - 1]
        if h < hmax:
            pixels[i, h, : min(w + 1, wmax)] = pixels[i, h - 1, : min(w + 1, wmax)]
    flags = torch.stack([b[0][1] for b in kept])
    sizes = torch.tensor([[r.shape[0], r.shape[1]] for r in regions], dtype=torch.int64)
    targets = torch.utils.data.default_collate([b[1] for b in kept])
    return Regions(pixels, sizes, flags[:, 0].bool(), flags[:, 1]), targets


def resize_regions(regions: Regions, size: int) -> torch.Tensor:
    """Every crop resized to size x size and flipped where asked -> float32 [N, 3, size, size] in 0..255,
    on the regions' device. Bilinear crops: one ROI-align (bin centres sampled as `F.interpolate` with
    align_corners=False samples them; adaptive sampling averages ceil(crop/size) points per bin when
    shrinking, in place of an antialiasing filter). Bicubic crops: antialiased interpolation one by one."""
    from torchvision.ops import roi_align

    pixels, sizes = regions.pixels, regions.sizes
    n = pixels.shape[0]
    out = torch.empty((n, 3, size, size), dtype=torch.float32, device=pixels.device)
    images = pixels.permute(0, 3, 1, 2).float()  # [N, 3, Hmax, Wmax]
    sizes_cpu = sizes.tolist()
    bilinear = (regions.modes == 0).nonzero().flatten()
    if len(bilinear):
        hw = sizes[bilinear].to(torch.float32)
        boxes = torch.zeros((len(bilinear), 5), dtype=torch.float32, device=pixels.device)
        boxes[:, 0] = bilinear.to(torch.float32)
        boxes[:, 3] = hw[:, 1]  # x2 = w
        boxes[:, 4] = hw[:, 0]  # y2 = h
        out[bilinear] = roi_align(images.contiguous(), boxes, (size, size), 1.0, -1, True)
    for i in (regions.modes != 0).nonzero().flatten().tolist():
        h, w = sizes_cpu[i]
        crop = images[i : i + 1, :, :h, :w]
        out[i] = F.interpolate(crop, (size, size), mode="bicubic", antialias=True, align_corners=False)[0]
    out.clamp_(0, 255)
    return torch.where(regions.flips.view(n, 1, 1, 1), out.flip(-1), out)


class BatchAugment:
    """uint8 [N, 3, S, S] batches (or `Regions`) -> normalised float32 [N, 3, S, S] on their device, with
    random erasing (`re_prob`) and, if asked, channels_last memory format (ConvNeXt on CUDA).

    reuse_output: CPU batches are written into one buffer kept from call to call, so each call overwrites
    the previous result; for a training step, which is done with its batch before the next one arrives. A
    fresh 38 MB tensor per batch of 64 at 224 px cost ~0.4 ms per image in page faults, more than the
    normalising itself (measured on the 2-core machine). CUDA memory comes from PyTorch's caching allocator
    and is never reused here."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        size: int,
        re_prob: float = 0.0,
        channels_last: bool = False,
        reuse_output: bool = False,
    ):
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self.size = int(size)
        self.re_prob = float(re_prob)
        self.channels_last = channels_last
        self.reuse_output = reuse_output
        self._out: torch.Tensor | None = None
        self._consts: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _for(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._consts:
            mean = torch.tensor([255.0 * m for m in self.mean], device=device).view(1, 3, 1, 1)
            inv = torch.tensor([1.0 / (255.0 * s) for s in self.std], device=device).view(1, 3, 1, 1)
            self._consts[device] = (mean, inv)
        return self._consts[device]

    def __call__(self, batch: torch.Tensor | Regions) -> torch.Tensor:
        if isinstance(batch, Regions):
            x = resize_regions(batch, self.size)
        elif batch.dtype == torch.uint8:
            x = self._buffer(batch).copy_(batch)
        else:
            raise TypeError(f"BatchAugment expects uint8 batches, got {batch.dtype}")
        mean, inv = self._for(x.device)
        x.sub_(mean).mul_(inv)
        if self.re_prob > 0:
            from timm.data.random_erasing import RandomErasing

            RandomErasing(probability=self.re_prob, mode="pixel", max_count=1, device=x.device)(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _buffer(self, batch: torch.Tensor) -> torch.Tensor:
        if not (self.reuse_output and batch.device.type == "cpu"):
            return torch.empty(batch.shape, dtype=torch.float32, device=batch.device)
        if self._out is None or self._out.shape != batch.shape:
            self._out = torch.empty(batch.shape, dtype=torch.float32)
        return self._out

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_out": None, "_consts": {}}  # buffers stay in their process

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mean={self.mean}, std={self.std}, size={self.size}, re_prob={self.re_prob}, "
            f"channels_last={self.channels_last})"
        )

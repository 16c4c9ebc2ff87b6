"""Transforms built from `dataset.augmentation` (duck-typed: any object with the attributes below).

Which key acts where (every key acts somewhere; `AUGMENTATION_KEYS` lists them and a test checks the list
against `mae.config.AugmentationConfig`):

  key                          pretrain  finetune  eval   batch (build_mixup, in the training step)
  input_size                   crop      crop      resize+centre crop
  mean, std                    normalise normalise normalise
  min_scale, max_scale         crop      crop
  min_ratio, max_ratio         crop      crop
  interpolation                crop      crop, RandAugment   resize ("random" -> bicubic)
  hflip                        flip      flip
  color_jitter (0 = off)       jitter    jitter
  auto_aug ("" / None = off)             RandAugment / AutoAugment / AugMix (timm policy string)
  re_prob (0 = off)                      random erasing (per-pixel noise, one box)
  mixup, cutmix, cutmix_minmax, mixup_prob, mixup_switch_prob, mixup_mode        timm Mixup
  smoothing                                                                     Mixup soft targets (and the
                                                                                engine's cross-entropy)

Crop scales above 1 (TAO's default `max_scale: 2.0`) are accepted and sampled exactly as torchvision's (and
timm's) RandomResizedCrop samples them, which is what TAO's pipeline ran: the area fraction is drawn
uniformly from [min_scale, max_scale], a draw whose crop does not fit in the image is redrawn, and after 10
failed draws the crop is the whole image (centre crop with the ratio clamped). So a crop never exceeds the
image; with the defaults (0.1, 2.0) the kept areas are uniform in [0.1, 1] and about 1.4% of crops are
whole-image fallbacks (~16% at max_scale 4, 0.02% at 1.0). Why not the alternatives: clamping each draw to 1.0 would make
(max-1)/(max-min) = 53% of all crops whole images with the defaults, silently weakening the augmentation
TAO users tuned; a zoom-out with padding would feed the MAE borders of constant colour to reconstruct.
`tests/test_data_transforms.py` measures these numbers.

Decoding: each transform carries `decode_min_side`, the smallest short side it can use without losing
detail (eval: the resize target; training: enough for the smallest crop to span input_size pixels, e.g.
818 for 224 px with the TAO defaults). The datasets decode JPEGs at least twice that large at 1/2-1/8
scale (PIL `draft`), which makes camera-sized photos several times cheaper and leaves small images alone.

Unlike timm's `create_transform`, colour jitter is not dropped when `auto_aug` is on: a spec that sets both
gets both (the default `color_jitter: 0.0` keeps the MAE recipe unchanged).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as F

from mae.errors import ConfigError

PREFIX = "dataset.augmentation"
AUGMENTATION_KEYS = (
    "input_size",
    "mean",
    "std",
    "min_scale",
    "max_scale",
    "min_ratio",
    "max_ratio",
    "hflip",
    "re_prob",
    "interpolation",
    "smoothing",
    "color_jitter",
    "auto_aug",
    "mixup",
    "cutmix",
    "cutmix_minmax",
    "mixup_prob",
    "mixup_switch_prob",
    "mixup_mode",
)
INTERPOLATIONS = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
EVAL_CROP_PCT = 224 / 256  # evaluation resizes the short side to input_size / 0.875, then centre-crops (MAE)
_OFF = ("", "none", "off", "false")


# --------------------------------------------------------------------------------------------- pieces


class RandomResizedCropInterp(T.RandomResizedCrop):
    """torchvision's RandomResizedCrop (same sampling, same RNG) with a choice of interpolations, one picked
    at random per image when several are given (`interpolation: random`).

    Sampling (torchvision's `get_params`): area fraction uniform in `scale`, aspect ratio (w/h) log-uniform
    in `ratio`; a draw whose crop does not fit in the image is redrawn, up to 10 times, then a centre crop
    with the ratio clamped into range (the whole image when its ratio is already in range). Scales above 1
    therefore never make a crop larger than the image; see the module docstring."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        interpolations: Sequence[InterpolationMode] = (InterpolationMode.BILINEAR,),
    ):
        super().__init__(size, scale=scale, ratio=ratio, interpolation=interpolations[0], antialias=True)
        self.interpolations = tuple(interpolations)

    def forward(self, img):
        top, left, h, w = self.get_params(img, self.scale, self.ratio)
        interp = self.interpolations[0]
        if len(self.interpolations) > 1:
            interp = self.interpolations[int(torch.randint(0, len(self.interpolations), (1,)).item())]
        return F.resized_crop(img, top, left, h, w, self.size, interp, antialias=True)

    def __repr__(self) -> str:
        names = "|".join(i.value for i in self.interpolations)
        return f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, interpolation={names})"


def sample_crop(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float]
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random resized crop: torchvision's `RandomResizedCrop.get_params` algorithm
    (area fraction uniform in `scale`, ratio log-uniform in `ratio`, 10 tries, then a centre crop with the
    ratio clamped), drawn from Python's `random` rather than torch's generator: the same distribution at
    ~6 us a crop instead of ~300 us of per-call tensor overhead, which mattered once decoding was gone."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * random.uniform(scale[0], scale[1])
        aspect = math.exp(random.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class StoredResizedCrop:
    """RandomResizedCrop and horizontal flip of a stored image (a uint8 H x W x 3 array from
    `mae.data.store`) -> uint8 tensor [3, size, size]. The crop is sampled as `RandomResizedCropInterp`
    samples it (`sample_crop`), over the stored image; `interpolation: random` picks bilinear or bicubic per
    image; then the flip is drawn (probability `flip`). The crop is mirrored while it is copied out of the
    store and resized with torch's antialiased uint8 kernels (within 1-2 levels of PIL's, ~1.4-2x faster)."""

    def __init__(
        self,
        size: int,
        scale: tuple[float, float],
        ratio: tuple[float, float],
        interpolations: Sequence[InterpolationMode] = (InterpolationMode.BILINEAR,),
        flip: float = 0.0,
    ):
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.modes = tuple(i.value for i in interpolations)  # "bilinear" / "bicubic", as F.interpolate names
        self.flip = float(flip)

    def draw(self, height: int, width: int) -> tuple[int, int, int, int, str, bool]:
        """(top, left, h, w, interpolation, flip) for one image; the device path draws through here too."""
        top, left, h, w = sample_crop(height, width, self.scale, self.ratio)
        mode = self.modes[0] if len(self.modes) == 1 else random.choice(self.modes)
        return top, left, h, w, mode, self.flip > 0 and random.random() < self.flip

    def __call__(self, arr: np.ndarray) -> torch.Tensor:
        top, left, h, w, mode, flip = self.draw(arr.shape[0], arr.shape[1])
        region = arr[top : top + h, left : left + w]
        # a copy of the crop only (the array is a read-only view of the store's memory map)
        x = torch.from_numpy(np.array(region[:, ::-1] if flip else region)).permute(2, 0, 1)[None]
        if (h, w) != (self.size, self.size):
            x = torch.nn.functional.interpolate(
                x, size=(self.size, self.size), mode=mode, antialias=True, align_corners=False
            )
        return x[0]

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"interpolation={'|'.join(self.modes)}, flip={self.flip})"
        )


class ToNormalizedTensor:
    """PIL RGB image (or uint8 CHW tensor) -> float32 CHW tensor, normalised: (x/255 - mean) / std in one
    pass."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        self._scale = torch.tensor([1.0 / (255.0 * s) for s in self.std]).view(3, 1, 1)
        self._shift = torch.tensor([m / s for m, s in zip(self.mean, self.std, strict=True)]).view(3, 1, 1)

    def __call__(self, img: Image.Image | torch.Tensor) -> torch.Tensor:
        if isinstance(img, torch.Tensor) and img.dtype == torch.uint8 and img.ndim == 3 and img.shape[0] == 3:
            chw = img
        elif isinstance(img, Image.Image):
            rgb = img.convert("RGB") if img.mode != "RGB" else img
            chw = torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1)
        else:
            raise TypeError(
                f"ToNormalizedTensor expects a PIL image or a uint8 [3, H, W] tensor, got {type(img).__name__}"
            )
        x = chw.to(torch.float32, memory_format=torch.contiguous_format)
        return x.mul_(self._scale).sub_(self._shift)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"


# ------------------------------------------------------------------------------------------- checking


def check_augmentation(aug: Any) -> None:
    """ConfigError listing every problem of an augmentation object (pydantic configs are already valid;
    this guards duck-typed ones and gives dotted names)."""
    p, errors = PREFIX, []
    missing = [k for k in AUGMENTATION_KEYS if not hasattr(aug, k)]
    if missing:
        raise ConfigError(f"{p}: missing key(s) {', '.join(missing)}")
    if not (isinstance(aug.input_size, int) and aug.input_size > 0):
        errors.append(f"{p}.input_size={aug.input_size!r}: expected a positive whole number of pixels")
    for key in ("mean", "std"):
        value = getattr(aug, key)
        if len(value) != 3:
            errors.append(f"{p}.{key}={value}: expected 3 numbers (R, G, B)")
    if any(s <= 0 for s in aug.std):
        errors.append(f"{p}.std={aug.std}: every std must be > 0")
    if not 0 < aug.min_scale <= aug.max_scale:
        errors.append(f"{p}.min_scale={aug.min_scale}, max_scale={aug.max_scale}: expected 0 < min <= max")
    if not 0 < aug.min_ratio <= aug.max_ratio:
        errors.append(f"{p}.min_ratio={aug.min_ratio}, max_ratio={aug.max_ratio}: expected 0 < min <= max")
    for key in ("hflip", "re_prob", "mixup_prob", "mixup_switch_prob"):
        if not 0.0 <= getattr(aug, key) <= 1.0:
            errors.append(f"{p}.{key}={getattr(aug, key)}: a probability must be in [0, 1]")
    if not 0.0 <= aug.smoothing < 1.0:
        errors.append(f"{p}.smoothing={aug.smoothing}: expected 0 <= smoothing < 1")
    for key in ("color_jitter", "mixup", "cutmix"):
        if getattr(aug, key) < 0:
            errors.append(f"{p}.{key}={getattr(aug, key)}: must be >= 0")
    if aug.interpolation not in (*INTERPOLATIONS, "random"):
        errors.append(f"{p}.interpolation={aug.interpolation!r}: expected bilinear, bicubic or random")
    if aug.mixup_mode not in ("batch", "pair", "elem"):
        errors.append(f"{p}.mixup_mode={aug.mixup_mode!r}: expected batch, pair or elem")
    mm = aug.cutmix_minmax
    if mm is not None and (len(mm) != 2 or not 0.0 < mm[0] < mm[1] <= 1.0):
        errors.append(f"{p}.cutmix_minmax={mm}: expected [min, max] with 0 < min < max <= 1")
    if errors:
        raise ConfigError(errors)


def _train_interpolations(aug: Any) -> tuple[InterpolationMode, ...]:
    if aug.interpolation == "random":
        return (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
    return (INTERPOLATIONS[aug.interpolation],)


def _crop_and_flip(aug: Any, stored: bool = False, pil_ops_follow: bool = False) -> list:
    crop_args = dict(
        scale=(aug.min_scale, aug.max_scale),
        ratio=(aug.min_ratio, aug.max_ratio),
        interpolations=_train_interpolations(aug),
    )
    if stored:  # the flip is drawn and applied inside the crop (mirrored while copied out of the store)
        tfs: list = [StoredResizedCrop(aug.input_size, flip=aug.hflip, **crop_args)]
        if pil_ops_follow:
            tfs.append(T.ToPILImage())  # the policies and the jitter then run on PIL images, as for files
        return tfs
    tfs = [RandomResizedCropInterp(aug.input_size, **crop_args)]
    if aug.hflip > 0:
        tfs.append(T.RandomHorizontalFlip(p=aug.hflip))
    return tfs


def _color_jitter(aug: Any) -> list:
    cj = aug.color_jitter
    if isinstance(cj, (list, tuple)):  # (brightness, contrast, saturation[, hue]) as timm accepts
        return [T.ColorJitter(*cj)] if any(v > 0 for v in cj) else []
    return [T.ColorJitter(brightness=cj, contrast=cj, saturation=cj)] if cj > 0 else []


def auto_aug_enabled(aug: Any) -> bool:
    return bool(aug.auto_aug) and str(aug.auto_aug).strip().lower() not in _OFF


def _auto_augment(aug: Any) -> list:
    """timm's RandAugment ("rand-..."), AugMix ("augmix-...") or AutoAugment ("original", "v0", ...)."""
    if not auto_aug_enabled(aug):
        return []
    from timm.data.auto_augment import (
        augment_and_mix_transform,
        auto_augment_transform,
        rand_augment_transform,
    )

    policy = str(aug.auto_aug).strip()
    hparams: dict[str, Any] = {
        "translate_const": int(aug.input_size * 0.45),
        "img_mean": tuple(min(255, round(255 * m)) for m in aug.mean),
    }
    if aug.interpolation != "random":  # timm's default is a random choice of bilinear/bicubic
        hparams["interpolation"] = (
            Image.Resampling.BICUBIC if aug.interpolation == "bicubic" else Image.BILINEAR
        )
    if policy.startswith("rand"):
        build = rand_augment_transform
    elif policy.startswith("augmix"):
        build = augment_and_mix_transform
    else:
        build = auto_augment_transform
    try:
        tf = pil_safe_policy(build(policy, hparams))
        tf(Image.new("RGB", (8, 8)))  # some malformed strings only fail when applied
    except (AssertionError, KeyError, ValueError, TypeError, IndexError) as e:
        raise ConfigError(
            f"{PREFIX}.auto_aug={policy!r}: not a valid timm augmentation policy ({type(e).__name__}: {e}); "
            "e.g. 'rand-m9-mstd0.5-inc1' (RandAugment), 'augmix-m5-w4-d2', 'original', or '' for off"
        ) from None
    return [tf]


def _posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize for Pillow >= 13, which refuses 0 bits: timm's `PosterizeIncreasing` reaches 0 bits
    at high magnitude (and with `mstd` noise), which older Pillow turned into a black image."""
    bits = int(bits_to_keep)
    if bits >= 8:
        return img
    if bits < 1:
        return Image.new(img.mode, img.size)
    from PIL import ImageOps

    return ImageOps.posterize(img, bits)


def pil_safe_policy(tf: Any) -> Any:
    """Replace the posterize op of a timm RandAugment/AutoAugment/AugMix by `_posterize` (see there); a
    training run must not die on a random magnitude draw."""
    from timm.data import auto_augment as aa

    ops = list(getattr(tf, "ops", []) or [])
    for sub in getattr(tf, "policy", []) or []:
        ops.extend(sub)
    for op in ops:
        if getattr(op, "aug_fn", None) is aa.posterize:
            op.aug_fn = _posterize
    return tf


# ------------------------------------------------------------------------------------------- builders


def _crop_min_side(aug: Any) -> int:
    """The smallest short side an image may be decoded at without any crop becoming blurrier: the smallest
    crop (area min_scale, most extreme ratio) must still span input_size pixels both ways."""
    narrow = min(aug.min_ratio, 1.0 / aug.max_ratio, 1.0)
    return math.ceil(aug.input_size / math.sqrt(min(aug.min_scale, 1.0) * narrow))


def _with_decode_hint(tf: T.Compose, min_side: int) -> T.Compose:
    # read by the datasets: large JPEGs are decoded at reduced scale, never below min_side (load_rgb)
    tf.decode_min_side = int(min_side)
    return tf


OUTPUTS = ("normalized", "uint8", "regions")


def has_pil_ops(aug: Any, stage: str) -> bool:
    """Whether the stage's training transform runs per-image PIL operations after the crop (colour jitter;
    auto_aug when finetuning), which keep the crops on the CPU (see mae.data.batch_augment)."""
    return bool(_color_jitter(aug)) or (stage == "finetune" and auto_aug_enabled(aug))


def _output(aug: Any, output: str, *, erasing: bool) -> list:
    """The last per-image steps: normalise (+ random erasing when finetuning), or hand uint8 pixels to
    `mae.data.batch_augment.BatchAugment`, which does both on the batch."""
    if output == "normalized":
        tfs: list = [ToNormalizedTensor(aug.mean, aug.std)]
        if erasing and aug.re_prob > 0:
            from timm.data.random_erasing import RandomErasing

            tfs.append(RandomErasing(probability=aug.re_prob, mode="pixel", max_count=1, device="cpu"))
        return tfs
    from mae.data.batch_augment import ToUint8Tensor

    return [ToUint8Tensor()]


def _training_transform(aug: Any, pil_ops: list, stored: bool, output: str, erasing: bool) -> T.Compose:
    check_augmentation(aug)
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r}; expected one of {OUTPUTS}")
    if output == "regions":  # the device path (mae.data.batch_augment): crops left for the GPU to resize
        if not stored or pil_ops:
            raise ValueError("output='regions' needs stored images and no per-image PIL operations")
        from mae.data.batch_augment import StoredCropRegion

        (crop,) = _crop_and_flip(aug, stored=True)
        tf = T.Compose([StoredCropRegion(crop)])
    else:
        tf = T.Compose(
            [*_crop_and_flip(aug, stored, bool(pil_ops)), *pil_ops, *_output(aug, output, erasing=erasing)]
        )
    tf.accepts_arrays = stored  # read by the datasets: a decoded store hands this transform its arrays
    return _with_decode_hint(tf, _crop_min_side(aug))


def build_pretrain_transform(aug: Any, *, stored: bool = False, output: str = "normalized") -> T.Compose:
    """MAE pretraining: random resized crop (min/max scale and ratio, interpolation), horizontal flip,
    colour jitter when set, normalise.

    stored=True: for images of a decoded store (uint8 arrays, `StoredResizedCrop`). output: "normalized"
    (float32 tensors), "uint8" (normalised later on the batch, `mae.data.batch_augment`), or "regions"
    (stored images only: the crops unresized, for the device path)."""
    return _training_transform(aug, _color_jitter(aug), stored, output, erasing=False)


def build_finetune_transform(aug: Any, *, stored: bool = False, output: str = "normalized") -> T.Compose:
    """Finetuning: crop + flip as in pretraining, then the `auto_aug` policy, colour jitter, normalise and
    random erasing (`re_prob`; on the batch with output "uint8"). Mixup/CutMix act on batches: see
    `build_mixup`. `stored`, `output`: as for `build_pretrain_transform`."""
    return _training_transform(aug, [*_auto_augment(aug), *_color_jitter(aug)], stored, output, erasing=True)


def build_eval_transform(aug: Any) -> T.Compose:
    """Evaluation/inference: resize the short side to input_size / 0.875, centre-crop input_size, normalise.
    Interpolation as in the spec ("random" -> bicubic)."""
    check_augmentation(aug)
    interp = INTERPOLATIONS.get(aug.interpolation, InterpolationMode.BICUBIC)
    resize = int(math.floor(aug.input_size / EVAL_CROP_PCT))
    tf = T.Compose(
        [
            T.Resize(resize, interpolation=interp, antialias=True),
            T.CenterCrop(aug.input_size),
            ToNormalizedTensor(aug.mean, aug.std),
        ]
    )
    return _with_decode_hint(tf, resize)


def mixup_enabled(aug: Any) -> bool:
    return (aug.mixup > 0 or aug.cutmix > 0 or aug.cutmix_minmax is not None) and aug.mixup_prob > 0


def build_mixup(aug: Any, num_classes: int):
    """timm's Mixup/CutMix for a training batch `(images, labels) -> (images, soft targets)` with label
    smoothing folded into the targets; None when mixup, cutmix and cutmix_minmax are all off or
    mixup_prob is 0 (the engine then uses cross-entropy with `smoothing`). Needs an even batch size."""
    check_augmentation(aug)
    if not mixup_enabled(aug):
        return None
    from timm.data import Mixup

    return Mixup(
        mixup_alpha=float(aug.mixup),
        cutmix_alpha=float(aug.cutmix),
        cutmix_minmax=list(aug.cutmix_minmax) if aug.cutmix_minmax is not None else None,
        prob=float(aug.mixup_prob),
        switch_prob=float(aug.mixup_switch_prob),
        mode=str(aug.mixup_mode),
        label_smoothing=float(aug.smoothing),
        num_classes=int(num_classes),
    )

"""Every `dataset.augmentation` key takes effect; crop scales above 1 behave as documented."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import RandomResizedCrop

from mae.config import AugmentationConfig
from mae.data import (
    AUGMENTATION_KEYS,
    build_eval_transform,
    build_finetune_transform,
    build_mixup,
    build_pretrain_transform,
)
from mae.data.transforms import RandomResizedCropInterp, check_augmentation
from mae.errors import ConfigError

W, H = 120, 90  # a 4:3 test image


def aug(**overrides) -> AugmentationConfig:
    return AugmentationConfig().model_copy(update=overrides)


# a crop of the whole image (4:3 kept), no flip, no policy: a deterministic pipeline to perturb one key at a time
FIXED = dict(min_scale=1.0, max_scale=1.0, min_ratio=W / H, max_ratio=W / H, hflip=0.0, auto_aug=None)


def gradient_image() -> Image.Image:
    x = np.linspace(0, 255, W, dtype=np.float32)[None, :].repeat(H, 0)
    y = np.linspace(0, 255, H, dtype=np.float32)[:, None].repeat(W, 1)
    rgb = np.stack([x, y, (x * y / 255) % 256], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def seeded(tf, img, seed=0):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)
    return tf(img)


# ------------------------------------------------------------------------------------- key coverage


def test_keys_match_the_config_model():
    assert set(AUGMENTATION_KEYS) == set(AugmentationConfig.model_fields), (
        "mae.config.AugmentationConfig and mae.data.transforms.AUGMENTATION_KEYS differ: every spec key "
        "must be implemented by the data layer"
    )


class Recorder:
    def __init__(self, inner):
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name):
        self.read.add(name)
        return getattr(self._inner, name)


def test_every_key_is_read_by_some_builder():
    rec = Recorder(aug(re_prob=0.25, color_jitter=0.3, cutmix_minmax=[0.2, 0.8]))
    build_pretrain_transform(rec)
    build_finetune_transform(rec)
    build_eval_transform(rec)
    build_mixup(rec, num_classes=5)
    assert set(AUGMENTATION_KEYS) <= rec.read


# ----------------------------------------------------------------------------------- effects, per key


@pytest.mark.parametrize("build", [build_pretrain_transform, build_finetune_transform, build_eval_transform])
def test_input_size(build):
    for size in (32, 48):
        out = build(aug(input_size=size))(gradient_image())
        assert out.shape == (3, size, size) and out.dtype == torch.float32


def test_mean_and_std_normalise():
    img = Image.new("RGB", (W, H), (51, 102, 204))
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 0.125]
    for build in (build_pretrain_transform, build_eval_transform):
        out = build(aug(input_size=32, mean=mean, std=std, **FIXED))(img)
        expected = [(c / 255 - m) / s for c, m, s in zip((51, 102, 204), mean, std, strict=True)]
        assert torch.allclose(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-5)


def test_scale_and_ratio_set_the_crop():
    crop = build_pretrain_transform(
        aug(min_scale=0.25, max_scale=0.25, min_ratio=1.0, max_ratio=1.0)
    ).transforms[0]
    torch.manual_seed(0)
    for _ in range(50):
        _, _, h, w = crop.get_params(gradient_image(), crop.scale, crop.ratio)
        assert abs(w * h / (W * H) - 0.25) < 0.02 and abs(w / h - 1.0) < 0.03
    wide = build_pretrain_transform(aug(min_ratio=1.3, max_ratio=1.33, min_scale=0.2, max_scale=0.3))
    _, _, h, w = wide.transforms[0].get_params(gradient_image(), (0.2, 0.3), (1.3, 1.33))
    assert 1.25 < w / h < 1.38


def _areas(scale, n=6000, size=(500, 375)):
    crop = RandomResizedCropInterp(224, scale=scale, ratio=(0.75, 1.33))
    img = Image.new("RGB", size)
    torch.manual_seed(0)
    out = []
    for _ in range(n):
        _, _, h, w = crop.get_params(img, crop.scale, crop.ratio)
        out.append(h * w / (size[0] * size[1]))
    return np.array(out)


def test_max_scale_above_one_never_exceeds_the_image_and_matches_torchvision():
    """TAO's default max_scale 2.0: crops stay inside the image, areas are uniform in [0.1, 1] and only
    ~1.5% are whole-image fallbacks (clamping each draw would have made 53% whole images)."""
    areas = _areas((0.1, 2.0))
    whole = (areas > 0.99).mean()  # the fallback crop: whole image, ratio clamped to 1.33
    assert areas.max() <= 1.0
    assert 0.005 < whole < 0.03, whole
    assert 0.42 < areas.mean() < 0.48  # uniform on [0.1, 1] has mean 0.55, minus crops that do not fit
    # the same sampler as torchvision's RandomResizedCrop (what TAO ran), draw for draw
    torch.manual_seed(1)
    ours = [
        RandomResizedCropInterp(224, (0.1, 2.0), (0.75, 1.33)).get_params(
            Image.new("RGB", (500, 375)), (0.1, 2.0), (0.75, 1.33)
        )
        for _ in range(20)
    ]
    torch.manual_seed(1)
    tv = [
        RandomResizedCrop.get_params(Image.new("RGB", (500, 375)), (0.1, 2.0), (0.75, 1.33))
        for _ in range(20)
    ]
    assert ours == tv
    # larger max_scale: more whole-image crops, still never larger than the image
    assert (_areas((0.1, 4.0)) > 0.99).mean() > 2 * whole
    assert (_areas((0.1, 1.0)) > 0.99).mean() < 0.005


def test_max_scale_two_on_a_real_pipeline_outputs_input_size():
    out = build_pretrain_transform(aug(input_size=32))(gradient_image())
    assert out.shape == (3, 32, 32)


def test_hflip():
    img = gradient_image()
    plain = build_pretrain_transform(aug(input_size=32, **FIXED))(img)
    flipped = build_pretrain_transform(aug(input_size=32, **{**FIXED, "hflip": 1.0}))(img)
    assert torch.allclose(flipped, plain.flip(-1), atol=1e-6)
    assert not torch.allclose(flipped, plain)


def test_interpolation():
    img = gradient_image()
    bil = build_pretrain_transform(aug(input_size=37, interpolation="bilinear", **FIXED))(img)
    bic = build_pretrain_transform(aug(input_size=37, interpolation="bicubic", **FIXED))(img)
    assert not torch.allclose(bil, bic)
    rnd = build_pretrain_transform(aug(input_size=37, interpolation="random", **FIXED))
    outs = [seeded(rnd, img, s) for s in range(12)]
    assert any(torch.allclose(o, bil) for o in outs) and any(torch.allclose(o, bic) for o in outs)
    ev_bil = build_eval_transform(aug(input_size=37, interpolation="bilinear"))(img)
    ev_bic = build_eval_transform(aug(input_size=37, interpolation="bicubic"))(img)
    assert not torch.allclose(ev_bil, ev_bic)


@pytest.mark.parametrize("build", [build_pretrain_transform, build_finetune_transform])
def test_color_jitter(build):
    img = gradient_image()
    off = build(aug(input_size=32, **FIXED))
    on = build(aug(input_size=32, color_jitter=0.4, **FIXED))
    assert torch.equal(seeded(off, img, 0), seeded(off, img, 1))
    assert not torch.allclose(seeded(on, img, 0), seeded(on, img, 1))


def test_auto_aug():
    img = gradient_image()
    names = [type(t).__name__ for t in build_finetune_transform(aug()).transforms]
    assert "RandAugment" in names  # TAO's default "rand-m9-mstd0.5-inc1"
    for off in (None, "", "none"):
        assert "RandAugment" not in [
            type(t).__name__ for t in build_finetune_transform(aug(auto_aug=off)).transforms
        ]
    on = build_finetune_transform(aug(input_size=32, **{**FIXED, "auto_aug": "rand-m9-n3-mstd0.5"}))
    outs = [seeded(on, img, s) for s in range(4)]
    assert not all(torch.allclose(outs[0], o) for o in outs[1:])
    assert "AugMixAugment" in [
        type(t).__name__ for t in build_finetune_transform(aug(auto_aug="augmix-m5-w4-d2")).transforms
    ]
    with pytest.raises(ConfigError, match=r"dataset\.augmentation\.auto_aug='rand-x9': not a valid"):
        build_finetune_transform(aug(auto_aug="rand-x9"))


def test_re_prob_erases_a_box():
    img = gradient_image()
    clean = build_finetune_transform(aug(input_size=48, **FIXED))(img)
    erased = seeded(build_finetune_transform(aug(input_size=48, re_prob=1.0, **FIXED)), img)
    changed = (erased != clean).any(dim=0)
    assert 0.02 <= changed.float().mean() <= 0.34  # one box of 2%..33% of the image
    assert (erased == clean).any()  # outside the box the image is untouched


# ------------------------------------------------------------------------------------------- mixup


def mix(cfg, n=4, classes=10, seed=0):
    m = build_mixup(cfg, num_classes=classes)
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 64, 64).clone()
    np.random.seed(seed)
    out, target = m(x, torch.arange(n))
    return m, out, target


def test_mixup_disabled_returns_none():
    assert build_mixup(aug(mixup=0.0, cutmix=0.0), 10) is None
    assert build_mixup(aug(mixup_prob=0.0), 10) is None
    assert build_mixup(aug(mixup=0.0, cutmix=0.0, cutmix_minmax=[0.2, 0.5]), 10) is not None


def test_mixup_blends_and_cutmix_pastes_with_switch_prob():
    # mixup only: each image is a blend (one value); cutmix only (switch 1.0): a pasted box (two values)
    for seed in range(5):
        _, out, _ = mix(aug(cutmix=0.0), seed=seed)
        assert all(out[i].unique().numel() == 1 for i in range(4))
    pasted = 0
    for seed in range(5):
        _, out, _ = mix(aug(mixup_switch_prob=1.0), seed=seed)
        pasted += sum(out[i].unique().numel() == 2 for i in range(4))
        assert all(set(out[i].unique().tolist()) <= {float(i), float(3 - i)} for i in range(4))
    assert pasted > 0
    for seed in range(5):  # switch 0.0 with both on: always mixup
        _, out, _ = mix(aug(mixup_switch_prob=0.0), seed=seed)
        assert all(out[i].unique().numel() == 1 for i in range(4))


def test_cutmix_minmax_bounds_the_box():
    for seed in range(10):
        _, out, target = mix(aug(cutmix=1.0, mixup=0.0, cutmix_minmax=[0.4, 0.5]), seed=seed)
        changed = (out[0, 0] != 0).float().mean().item()  # image 0 is all zeros; pasted pixels are 3
        assert 0.4**2 - 0.02 <= changed <= 0.5**2 + 0.02  # box sides are whole pixels


def test_mixup_prob_and_mode():
    m = build_mixup(aug(mixup_prob=0.3, mixup_mode="elem"), 10)
    assert (m.mix_prob, m.mode, m.switch_prob) == (0.3, "elem", 0.5)
    untouched = 0
    for seed in range(10):
        _, out, _ = mix(aug(mixup_prob=0.3, mixup_mode="elem"), n=8, seed=seed)
        untouched += sum(bool((out[i] == i).all()) for i in range(8))
    assert 30 < untouched < 80  # ~70% of 80 elements
    _, out, _ = mix(aug(mixup_prob=0.0 + 1.0, mixup_mode="pair", cutmix=0.0), n=4)
    # pair mode: elements i and n-1-i share one lambda, so their blends are mirror images
    assert torch.allclose(out[0] + out[3], torch.full_like(out[0], 3.0))


def test_smoothing_goes_into_the_targets():
    for smoothing in (0.0, 0.2):
        _, _, target = mix(aug(smoothing=smoothing, mixup_prob=1.0), classes=10)
        assert target.shape == (4, 10)
        assert torch.allclose(target.sum(dim=1), torch.ones(4))
        assert abs(target.min().item() - smoothing / 10) < 1e-6


# ------------------------------------------------------------------------------------------ checking


def test_duck_typed_settings_are_checked_with_every_problem_listed():
    fields = AugmentationConfig().model_dump()
    bad = SimpleNamespace(
        **{**fields, "min_scale": 0.9, "max_scale": 0.5, "interpolation": "nearest", "hflip": 2}
    )
    with pytest.raises(ConfigError) as err:
        check_augmentation(bad)
    assert len(err.value.problems) == 3
    assert "dataset.augmentation.min_scale=0.9" in str(err.value) and "interpolation='nearest'" in str(
        err.value
    )
    ok = SimpleNamespace(**fields)
    assert build_pretrain_transform(ok)(gradient_image()).shape == (3, 224, 224)


def test_eval_resizes_then_centre_crops():
    from torchvision.transforms import functional as F

    img = gradient_image()
    out = build_eval_transform(aug(input_size=56, interpolation="bicubic", mean=[0, 0, 0], std=[1, 1, 1]))(
        img
    )
    ref = F.center_crop(F.resize(img, 64, interpolation=F.InterpolationMode.BICUBIC, antialias=True), 56)
    assert torch.allclose(out, F.to_tensor(ref), atol=1e-6)


@pytest.mark.parametrize("policy", ["rand-m9-mstd0.5-inc1", "rand-m10-mstd1.0-mmax10-inc1", "v0"])
def test_policies_survive_every_magnitude_draw_with_current_pillow(policy):
    """Pillow 13 refuses posterize(0 bits), which timm's policies reach at high magnitude (the TAO default
    failed on about 1 image in 20 before the fix)."""
    tf = build_finetune_transform(aug(input_size=24, auto_aug=policy))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8))
    for seed in range(300):
        assert seeded(tf, img, seed).shape == (3, 24, 24)


def test_posterize_to_zero_bits_is_black_as_before():
    from mae.data.transforms import _posterize

    img = gradient_image()
    assert np.asarray(_posterize(img, 0)).max() == 0
    assert _posterize(img, 8) is img
    assert np.asarray(_posterize(img, 1)).max() == 128

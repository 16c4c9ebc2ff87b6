"""Small settings of every arch for fast tests on CPU (real widths, one block per stage, small images).

build_mae(arch, **tiny_mae_overrides(arch))
build_classifier(arch, num_classes, **tiny_classifier_kwargs(arch))
"""

from __future__ import annotations

from mae.models.archs import get_arch


def small_img_size(arch: str) -> int:
    """The smallest image size with 4 mask units (2 x 2) for `arch`: 4 patches of a ViT, 64 px otherwise."""
    spec = get_arch(arch)
    if spec.family == "vit":
        return 2 * spec.settings["patch_size"] if spec.settings["patch_size"] > 4 else 32
    return 64


def tiny_encoder_overrides(arch: str) -> dict:
    """One block per stage (ViT: one block), keeping the arch's widths and heads."""
    family = get_arch(arch).family
    if family == "vit":
        return {"depth": 1}
    if family == "convnextv2":
        return {"depths": (1, 1, 1, 1)}
    return {"stages": (1, 1, 1, 1)}


def tiny_mae_overrides(arch: str) -> dict:
    """build_mae overrides: tiny encoder, a one-block 64-wide decoder, the small image size."""
    return dict(
        img_size=small_img_size(arch),
        decoder_depth=1,
        decoder_embed_dim=64,
        **tiny_encoder_overrides(arch),
    )


def tiny_classifier_kwargs(arch: str) -> dict:
    """build_classifier keyword arguments matching `tiny_mae_overrides` (same encoder, same image size)."""
    return dict(img_size=small_img_size(arch), **tiny_encoder_overrides(arch))

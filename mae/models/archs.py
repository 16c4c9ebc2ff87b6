"""The table of supported architectures (`model.arch`).

Pure Python on purpose: the config layer and the CLI validate `model.arch` against these names without
importing torch. The builders in the family modules (vit.py, convnextv2.py, hiera.py) read their settings here.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class ArchSpec:
    family: str  # "vit" | "convnextv2" | "hiera"
    timm_name: str  # the timm backbone built with pretrained=False
    # Published MAE decoder for the family (ViT, Hiera: 8 blocks x 512; FCMAE: 1 block x 512).
    decoder_depth: int
    decoder_embed_dim: int = 512
    settings: dict = field(default_factory=dict)  # family-specific encoder settings


def _vit(timm_name: str, embed_dim: int, depth: int, num_heads: int, patch_size: int) -> ArchSpec:
    return ArchSpec(
        "vit",
        timm_name,
        decoder_depth=8,
        settings=dict(embed_dim=embed_dim, depth=depth, num_heads=num_heads, patch_size=patch_size),
    )


def _convnextv2(size: str, depths: tuple, dims: tuple) -> ArchSpec:
    return ArchSpec(
        "convnextv2", f"convnextv2_{size}", decoder_depth=1, settings=dict(depths=depths, dims=dims)
    )


def _hiera(size: str, embed_dim: int, num_heads: int, stages: tuple) -> ArchSpec:
    return ArchSpec(
        "hiera",
        f"hiera_{size}_224",
        decoder_depth=8,
        settings=dict(embed_dim=embed_dim, num_heads=num_heads, stages=stages),
    )


ARCHS: dict[str, ArchSpec] = {
    # ConvNeXt V2 (FCMAE), sizes from the ConvNeXt V2 paper.
    "convnextv2_atto": _convnextv2("atto", (2, 2, 6, 2), (40, 80, 160, 320)),
    "convnextv2_femto": _convnextv2("femto", (2, 2, 6, 2), (48, 96, 192, 384)),
    "convnextv2_pico": _convnextv2("pico", (2, 2, 6, 2), (64, 128, 256, 512)),
    "convnextv2_nano": _convnextv2("nano", (2, 2, 8, 2), (80, 160, 320, 640)),
    "convnextv2_tiny": _convnextv2("tiny", (3, 3, 9, 3), (96, 192, 384, 768)),
    "convnextv2_base": _convnextv2("base", (3, 3, 27, 3), (128, 256, 512, 1024)),
    "convnextv2_large": _convnextv2("large", (3, 3, 27, 3), (192, 384, 768, 1536)),
    "convnextv2_huge": _convnextv2("huge", (3, 3, 27, 3), (352, 704, 1408, 2816)),
    # Hiera, sizes from the Hiera paper (224 px variants).
    "hiera_tiny_224": _hiera("tiny", 96, 1, (1, 2, 7, 2)),
    "hiera_small_224": _hiera("small", 96, 1, (1, 2, 11, 2)),
    "hiera_base_224": _hiera("base", 96, 1, (2, 3, 16, 3)),
    "hiera_large_224": _hiera("large", 144, 2, (2, 6, 36, 4)),
    "hiera_huge_224": _hiera("huge", 256, 4, (2, 6, 36, 4)),
    # ViT, as in the MAE paper, plus small sizes for laptops and tests.
    "vit_base_patch16": _vit("vit_base_patch16_224", 768, 12, 12, 16),
    "vit_large_patch16": _vit("vit_large_patch16_224", 1024, 24, 16, 16),
    "vit_huge_patch14": _vit("vit_huge_patch14_224", 1280, 32, 16, 14),
    "vit_tiny_patch16": _vit("vit_tiny_patch16_224", 192, 12, 3, 16),
    "vit_small_patch16": _vit("vit_small_patch16_224", 384, 12, 6, 16),
    "vit_tiny_patch4": _vit("vit_tiny_patch16_224", 192, 12, 3, 4),  # 4-px patches for 32-64 px images
    "vit_small_patch4": _vit("vit_small_patch16_224", 384, 12, 6, 4),
    # 4 blocks x 128: trains in seconds per epoch on a laptop CPU (the demo, CPU tests)
    "vit_micro_patch4": _vit("vit_tiny_patch16_224", 128, 4, 4, 4),
}

DEFAULT_ARCH = "convnextv2_base"


def list_archs() -> list[str]:
    """Every registered `model.arch` name, in table order."""
    return list(ARCHS)


def get_arch(name: str) -> ArchSpec:
    """The ArchSpec for `name`; an unknown name raises a ConfigError listing close matches."""
    if name not in ARCHS:
        from mae.errors import unknown_choice

        raise unknown_choice("model.arch", name, list_archs())
    return ARCHS[name]

"""`model.arch` -> builders. The arch table is `archs.ARCHS`; each family module supplies a `ModelFamily`."""

from __future__ import annotations

import torch.nn as nn

from mae.models.archs import get_arch
from mae.models.base import MaskedAutoencoder, ModelFamily

FAMILY_NAMES = ("vit", "convnextv2", "hiera")


def get_family(name: str) -> ModelFamily:
    """The ModelFamily called `name` ("vit", "convnextv2" or "hiera"); imports its module on first use."""
    if name == "vit":
        from mae.models import vit

        return vit.FAMILY
    if name == "convnextv2":
        from mae.models import convnextv2

        return convnextv2.FAMILY
    if name == "hiera":
        from mae.models import hiera

        return hiera.FAMILY
    raise ValueError(f"unknown model family {name!r}; known: {', '.join(FAMILY_NAMES)}")


def family_of(model: nn.Module) -> ModelFamily:
    """The family of a model built here (MAE or classifier); a TypeError for any other module."""
    name = getattr(model, "family", None)
    if name not in FAMILY_NAMES:
        raise TypeError(
            f"{type(model).__name__} was not built by mae.models (build_mae/build_classifier); "
            "its layers cannot be mapped"
        )
    return get_family(name)


def build_mae(arch: str, **overrides) -> MaskedAutoencoder:
    """The masked autoencoder for pretraining `arch`.

    Overrides common to all families: img_size (224), in_chans (3), mask_ratio (0.75), norm_pix_loss (True),
    decoder_depth / decoder_embed_dim (None or absent: the family's published decoder, see archs.py).
    ViT also takes patch_size, embed_dim, depth, num_heads, mlp_ratio, decoder_num_heads; ConvNeXt V2 takes
    depths, dims; Hiera takes embed_dim, num_heads, stages, decoder_num_heads. Unknown ones are a ConfigError.
    """
    spec = get_arch(arch)
    overrides = {k: v for k, v in overrides.items() if not (k.startswith("decoder_") and v is None)}
    return get_family(spec.family).build_mae(arch, spec, overrides)


def build_classifier(
    arch: str,
    num_classes: int,
    *,
    img_size: int = 224,
    drop_path_rate: float = 0.1,
    global_pool: bool = True,
    in_chans: int = 3,
    **overrides,
) -> nn.Module:
    """The finetune classifier for `arch`: `forward(imgs) -> logits`, `forward_features(imgs) -> [N, D]`.

    Its backbone names match the encoder of `build_mae(arch)`, so `encoder_state_dict()` loads into it with
    only the new head (and, for a global-pool ViT, fc_norm) missing. The head starts small (std 2e-5).
    `overrides` take the family's encoder settings (depth, dims, ...) for small test models.
    """
    spec = get_arch(arch)
    if num_classes < 1:
        from mae.errors import ConfigError

        raise ConfigError(f"model.num_classes: must be >= 1, got {num_classes}")
    model = get_family(spec.family).build_classifier(
        arch,
        spec,
        num_classes=num_classes,
        img_size=img_size,
        drop_path_rate=drop_path_rate,
        global_pool=global_pool,
        in_chans=in_chans,
        overrides=overrides,
    )
    model.arch = arch
    return model

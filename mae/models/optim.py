"""Optimizer parameter groups: no weight decay on norms, biases, tokens and position embeddings, and
layer-wise learning-rate decay (BEiT / MAE finetuning) for the three families.

With `layer_decay` = d and a model of `num_layers` = n, a parameter of layer i gets lr * d ** (n - i): the head
(and anything after the last block) keeps the full lr, the patch embedding gets the smallest. Each group holds
`lr_scale`; with `lr` given, its 'lr' is already lr * lr_scale, so any torch optimizer and LR scheduler (which
scale each group's initial lr) apply the decay as they are. A scheduler that sets absolute learning rates must
multiply by the group's `lr_scale` itself.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch.nn as nn

from mae.models.base import MaskedAutoencoder
from mae.models.registry import family_of

TOKEN_NAMES = ("cls_token", "mask_token", "reg_token", "pos_embed", "decoder_pos_embed")


def no_weight_decay(name: str, param: nn.Parameter, extra: Iterable[str] = ()) -> bool:
    """True for 1-D tensors (norm weights, biases, GRN, layer scale) and tokens / position embeddings."""
    leaf = name.split(".")[-1]
    return param.ndim <= 1 or leaf in TOKEN_NAMES or name in TOKEN_NAMES or name in set(extra)


def param_groups(
    model: nn.Module,
    *,
    weight_decay: float,
    layer_decay: float | None = None,
    lr: float | None = None,
    backbone_multiplier: float | None = None,
    no_decay_names: Iterable[str] = (),
) -> list[dict]:
    """Parameter groups for `torch.optim` from a model built by build_mae / build_classifier.

    Frozen parameters (requires_grad False, e.g. fixed sin-cos embeddings or `train.freeze`) are left out.
    Groups carry 'params', 'weight_decay', 'lr_scale', 'layer_id' and, when `lr` is given, 'lr'.
    `layer_decay` None or 1.0 puts every layer at scale 1. Layer ids: ViT and Hiera count blocks; ConvNeXt V2
    counts stem, stages and groups of the deep third stage (see each family's `layer_id`).
    `backbone_multiplier` (TAO's `train.optim.backbone_multiplier`) further scales the backbone's lr: the
    encoder of an MAE, everything but `head.*` / `fc_norm.*` in a classifier; it is folded into `lr_scale`.
    """
    if layer_decay is not None and not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay must be in (0, 1], got {layer_decay}")
    if backbone_multiplier is not None and backbone_multiplier <= 0:
        raise ValueError(f"backbone_multiplier must be > 0, got {backbone_multiplier}")
    use_layers = layer_decay is not None and layer_decay != 1.0
    family = family_of(model) if use_layers or backbone_multiplier is not None else None
    top = family.num_layers(model) if use_layers else 0
    extra = tuple(no_decay_names)
    groups: dict[tuple[int, bool, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decay = not no_weight_decay(name, param, extra)
        layer = family.layer_id(name, model) if use_layers else 0
        scale = layer_decay ** (top - layer) if use_layers else 1.0
        backbone = backbone_multiplier is not None and _is_backbone(model, name)
        if backbone:
            scale *= backbone_multiplier
        key = (layer, decay, backbone)
        if key not in groups:
            groups[key] = {
                "params": [],
                "weight_decay": weight_decay if decay else 0.0,
                "lr_scale": scale,
                "layer_id": layer,
            }
            if lr is not None:
                groups[key]["lr"] = lr * scale
        groups[key]["params"].append(param)
    return [groups[k] for k in sorted(groups)]


def _is_backbone(model: nn.Module, name: str) -> bool:
    """The encoder of an MAE; everything but the classification head (and its norm) of a classifier."""
    if isinstance(model, MaskedAutoencoder):
        return model.is_encoder_key(name)
    return not name.startswith(("head.", "fc_norm."))

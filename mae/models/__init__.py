"""The model zoo: ViT MAE, ConvNeXt V2 FCMAE and Hiera MAE for pretraining, and their finetune classifiers.

Importing `mae.models` does not import torch (the config layer reads `list_archs` without it); the torch-based
API below is imported on first access (PEP 562).

    build_mae(arch, **overrides) -> MaskedAutoencoder   model(imgs, mask_ratio=None, noise=None) -> (loss, pred, mask)
    build_classifier(arch, num_classes, *, img_size=224, drop_path_rate=0.1, global_pool=True, in_chans=3)
    load_weights(model, path_or_state_dict, *, expect="pretrain" | "classifier" | "encoder") -> LoadReport
    param_groups(model, *, weight_decay, layer_decay=None, lr=None) -> optimizer parameter groups
"""

from __future__ import annotations

from mae.models.archs import ARCHS, DEFAULT_ARCH, ArchSpec, get_arch, list_archs

_LAZY = {
    "build_mae": "mae.models.registry",
    "build_classifier": "mae.models.registry",
    "get_family": "mae.models.registry",
    "family_of": "mae.models.registry",
    "MaskedAutoencoder": "mae.models.base",
    "load_weights": "mae.models.checkpoint",
    "read_state_dict": "mae.models.checkpoint",
    "LoadReport": "mae.models.checkpoint",
    "param_groups": "mae.models.optim",
}

__all__ = ["ARCHS", "DEFAULT_ARCH", "ArchSpec", "get_arch", "list_archs", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mae.models' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)

"""The data layer: sources (folder, archive, s3://) -> cached local folders -> datasets -> loaders.

    resolve_source(source, *, cache_dir=None) -> Path          mae.data.sources (no torch import)
    ImageFolderSSL / ClassFolderDataset / ImageListDataset      mae.data.datasets
    build_pretrain_transform / build_finetune_transform /
    build_eval_transform / build_mixup                          mae.data.transforms
    build_loader                                                mae.data.loaders

Names are imported lazily, so `from mae.data import resolve_source` (e.g. in an AutoML driver or a test
subprocess) does not pay for importing torch. See docs/data.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "resolve_source": "sources",
    "resolve_source_info": "sources",
    "ResolvedSource": "sources",
    "default_cache_dir": "sources",
    "display_name": "sources",
    "IMG_EXTENSIONS": "sources",
    "RetryPolicy": "s3",
    "safe_extract": "extract",
    "ImageFolderSSL": "datasets",
    "ClassFolderDataset": "datasets",
    "ImageListDataset": "datasets",
    "find_images": "datasets",
    "find_classes": "datasets",
    "load_rgb": "datasets",
    "build_pretrain_transform": "transforms",
    "build_finetune_transform": "transforms",
    "build_eval_transform": "transforms",
    "build_mixup": "transforms",
    "AUGMENTATION_KEYS": "transforms",
    "build_loader": "loaders",
    "collate_skip_none": "loaders",
}

__all__ = [
    "AUGMENTATION_KEYS",
    "ClassFolderDataset",
    "IMG_EXTENSIONS",
    "ImageFolderSSL",
    "ImageListDataset",
    "ResolvedSource",
    "RetryPolicy",
    "build_eval_transform",
    "build_finetune_transform",
    "build_loader",
    "build_mixup",
    "build_pretrain_transform",
    "collate_skip_none",
    "default_cache_dir",
    "display_name",
    "find_classes",
    "find_images",
    "load_rgb",
    "resolve_source",
    "resolve_source_info",
    "safe_extract",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mae.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"mae.data.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # pragma: no cover
    from mae.data.datasets import (
        ClassFolderDataset,
        ImageFolderSSL,
        ImageListDataset,
        find_classes,
        find_images,
        load_rgb,
    )
    from mae.data.extract import safe_extract
    from mae.data.loaders import build_loader, collate_skip_none
    from mae.data.s3 import RetryPolicy
    from mae.data.sources import (
        IMG_EXTENSIONS,
        ResolvedSource,
        default_cache_dir,
        display_name,
        resolve_source,
        resolve_source_info,
    )
    from mae.data.transforms import (
        AUGMENTATION_KEYS,
        build_eval_transform,
        build_finetune_transform,
        build_mixup,
        build_pretrain_transform,
    )

"""Datasets and loaders for the engine, from the spec, with per-sample seeding.

Each training sample's augmentation is seeded from (seed, epoch, index), not from a worker's running RNG, so
the augmented batches of an epoch do not depend on the number of workers, on persistent workers, or on where a
run was interrupted and resumed. The sampler shards a seeded per-epoch permutation across DDP ranks itself
(Lightning's own distributed sampler is turned off).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from mae.config import ExperimentConfig
from mae.errors import ConfigError
from mae.layout import TrainLayout


def _as_list(sources) -> list[str]:
    return [sources] if isinstance(sources, str) else list(sources or [])


def resolve_sources(sources, key: str) -> list[Path]:
    from mae.data import resolve_source

    paths = [resolve_source(s) for s in _as_list(sources)]
    if not paths:
        raise ConfigError(f"{key}: no data source given")
    return paths


def ssl_dataset(sources, key: str, transform, **kwargs) -> Dataset:
    """Every image below the sources (pretraining reads any layout)."""
    from mae.data import ImageFolderSSL

    return ImageFolderSSL(resolve_sources(sources, key), transform, **kwargs)


def class_dataset(
    sources, key: str, transform, classes: Sequence[str] | None = None, **kwargs
) -> tuple[Dataset, list[str]]:
    """One subfolder per class; `classes` fixes the order (a checkpoint's), else the sorted folder names."""
    from mae.data import ClassFolderDataset

    ds = ClassFolderDataset(resolve_sources(sources, key), transform, classes=classes, **kwargs)
    return ds, list(ds.classes)


@dataclass
class TrainingPipeline:
    """The training input pipeline for a spec: per image in the loader workers, then per batch on the device
    (in the training step, after it is seeded). See mae.data.batch_augment."""

    transform: Callable  # per image: crop, flip, ... -> uint8 [3, S, S] (or an unresized crop, `Regions`)
    collate_fn: Callable | None  # None: the loader's default
    batch_augment: Callable  # uint8 batch (or Regions) -> normalised float32 batch, on its device
    description: str


def training_pipeline(cfg: ExperimentConfig, *, cuda: bool, channels_last: bool = False) -> TrainingPipeline:
    """Files or the decoded store (`dataset.store`); crops resized in the workers, or on the GPU when the
    images come from the store, the device is CUDA and no per-image PIL operation follows the crop."""
    from mae.data import build_finetune_transform, build_pretrain_transform
    from mae.data.batch_augment import BatchAugment, collate_regions
    from mae.data.transforms import has_pil_ops

    aug, stage, stored = cfg.dataset.augmentation, cfg.train.stage, cfg.dataset.store
    build = build_pretrain_transform if stage == "pretrain" else build_finetune_transform
    on_device = stored and cuda and not has_pil_ops(aug, stage)
    batch = BatchAugment(
        aug.mean,
        aug.std,
        size=aug.input_size,
        re_prob=aug.re_prob if stage == "finetune" else 0.0,
        channels_last=channels_last,
        reuse_output=not cuda,  # the training step is done with a batch before the next is normalised
    )
    source = f"decoded store ({store_short_side(cfg)} px)" if stored else "image files (decoded every epoch)"
    return TrainingPipeline(
        build(aug, stored=stored, output="regions" if on_device else "uint8"),
        collate_regions if on_device else None,
        batch,
        f"{source}, crops resized {'on the GPU' if on_device else 'in the loader workers'}",
    )


def store_short_side(cfg: ExperimentConfig) -> int:
    from mae.data.store import default_short_side

    d = cfg.dataset
    return d.store_short_side or default_short_side(d.augmentation.input_size)


def use_decoded_store(ds: Dataset, cfg: ExperimentConfig) -> Dataset:
    """Make `ds` read its images from the decoded store (`dataset.store`, see mae.data.store), built on first
    use; its transform must take stored images (`training_pipeline` builds such transforms)."""
    from mae.data.store import open_store, use_store

    return use_store(ds, open_store(ds.files, store_short_side(cfg), label=ds.label))


def check_num_classes(cfg: ExperimentConfig, classes: Sequence[str], key: str) -> None:
    if len(classes) != cfg.model.num_classes:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise ConfigError(
            f"model.num_classes={cfg.model.num_classes} but {key} has {len(classes)} class folders ({shown}); "
            f"set model.num_classes={len(classes)}"
        )


def save_classes(classes: Sequence[str], results_dir: str | os.PathLike) -> Path:
    from mae.fileio import atomic_write_text

    return atomic_write_text(
        TrainLayout(Path(results_dir)).classes, json.dumps({"classes": list(classes)}, indent=1) + "\n"
    )


class SeededSampler(Sampler):
    """Yields (index, sample_seed) for this rank: a permutation seeded by (seed, epoch), padded to divide
    evenly across ranks, then strided. `set_epoch` is called by Lightning at every epoch."""

    def __init__(self, n: int, seed: int, *, shuffle: bool = True, rank: int = 0, world_size: int = 1):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.per_rank = math.ceil(n / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        order += order[: self.per_rank * self.world_size - self.n]  # pad so every rank gets as many
        for idx in order[self.rank :: self.world_size]:
            ss = np.random.SeedSequence([self.seed, self.epoch, idx]).generate_state(1, np.uint32)
            yield idx, int(ss[0])


class SeededDataset(Dataset):
    """Receives (index, seed) from SeededSampler and seeds python, numpy and torch before the transform."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        import random

        idx, seed = key
        random.seed(seed)
        np.random.seed(seed)
        # the CPU generator only: torch.manual_seed would also queue lazy CUDA seeding, slow per sample
        torch.default_generator.manual_seed(seed)
        return self.dataset[idx]


def make_loader(
    dataset: Dataset,
    cfg: ExperimentConfig,
    *,
    train: bool,
    batch_size: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    collate_fn: Callable | None = None,
) -> torch.utils.data.DataLoader:
    from mae.data import build_loader

    bs = batch_size or cfg.dataset.batch_size
    workers = cfg.dataset.num_workers_per_gpu
    if train:
        sampler = SeededSampler(len(dataset), cfg.train.seed, shuffle=True, rank=rank, world_size=world_size)
        # drop the ragged last batch (MAE does; mixup needs even batches) unless it is the only one
        return build_loader(
            SeededDataset(dataset),
            bs,
            sampler=sampler,
            num_workers=workers,
            drop_last=len(sampler) > bs,
            collate_fn=collate_fn,
        )
    sampler = SeededSampler(len(dataset), cfg.train.seed, shuffle=False, rank=rank, world_size=world_size)
    return build_loader(SeededDataset(dataset), bs, sampler=sampler, num_workers=workers, drop_last=False)

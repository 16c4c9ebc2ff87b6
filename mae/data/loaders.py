"""DataLoaders: worker processes, pinned memory, persistent workers, and skip reporting.

`build_loader` returns a `DataLoader` subclass that

- collates with `collate_skip_none`: samples a dataset dropped (None, see `on_error="drop"`) are left out,
  and a batch in which every sample was dropped is skipped rather than yielded;
- after each full pass, logs one summary line per dataset whose images failed to decode (the count is
  shared with the worker processes, see `mae.data.datasets`).

Worker seeding: PyTorch seeds `random`, NumPy and torch in each worker from the loader's base seed, which
comes from `generator` (seeded by `seed`), so `seed` fixes both the shuffle order and the per-worker
augmentation streams for a given `num_workers`. The engine's own sampler may instead seed every sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data._utils.collate import default_collate


def collate_skip_none(batch: list[Any]) -> Any:
    """default_collate without the samples that are None; None when nothing is left."""
    kept = [b for b in batch if b is not None]
    if not kept:
        return None
    return default_collate(kept)


def image_datasets(dataset: Any) -> list[Any]:
    """The datasets with skip accounting inside `dataset` (through wrappers with `.dataset` and concat
    datasets with `.datasets`)."""
    found, stack, seen = [], [dataset], set()
    while stack:
        ds = stack.pop()
        if ds is None or id(ds) in seen:
            continue
        seen.add(id(ds))
        if hasattr(ds, "report_skipped"):
            found.append(ds)
        stack.extend(getattr(ds, "datasets", None) or [])
        stack.append(getattr(ds, "dataset", None))
    return found


class ImageDataLoader(DataLoader):
    """A DataLoader that skips empty (all-dropped) batches and reports undecodable images after each pass.
    Its constructor is DataLoader's, so Lightning can re-create it with another sampler."""

    def __iter__(self) -> Iterator[Any]:
        for batch in super().__iter__():
            if batch is not None:
                yield batch
        for ds in image_datasets(self.dataset):
            ds.report_skipped()


def build_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    num_workers: int = 0,
    drop_last: bool = False,
    seed: int | None = None,
    sampler: Sampler | None = None,
    pin_memory: bool | None = None,
    persistent_workers: bool | None = None,
    prefetch_factor: int | None = None,
    collate_fn: Callable | None = None,
    multiprocessing_context: Any = None,
) -> ImageDataLoader:
    """A DataLoader for `dataset` with the project's defaults.

    num_workers: worker processes for this loader (the spec's `num_workers_per_gpu`: each DDP rank builds its
                 own loader); 0 loads in the calling process.
    pin_memory:  default True when CUDA is available (faster host-to-GPU copies).
    persistent_workers: default True when num_workers > 0 (workers survive between epochs).
    seed:        seeds the shuffle order and the workers' base seed; None = from torch's global RNG.
    sampler:     replaces `shuffle` (e.g. a distributed or seeded sampler).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")
    if num_workers < 0:
        raise ValueError(f"num_workers={num_workers}: must be >= 0")
    if sampler is not None and shuffle:
        raise ValueError("give either shuffle=True or a sampler, not both")
    generator = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    workers_kwargs: dict[str, Any] = {}
    if num_workers > 0:
        workers_kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        workers_kwargs["prefetch_factor"] = prefetch_factor or 2
        if multiprocessing_context is not None:
            workers_kwargs["multiprocessing_context"] = multiprocessing_context
    return ImageDataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=collate_fn or collate_skip_none,
        pin_memory=pin_memory,
        drop_last=drop_last,
        generator=generator,
        **workers_kwargs,
    )

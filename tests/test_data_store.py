"""The decoded store: built once per data and resolution (also by concurrent processes), corrupt images
excluded and counted, every augmentation key acting on stored images, the GPU path's crops matching the CPU's,
and training with the store matching training without it."""

from __future__ import annotations

import logging
import multiprocessing
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from mae.config import AugmentationConfig
from mae.data import (
    AUGMENTATION_KEYS,
    ClassFolderDataset,
    ImageFolderSSL,
    build_finetune_transform,
    build_loader,
    build_mixup,
    build_pretrain_transform,
)
from mae.data.batch_augment import BatchAugment, Regions, collate_regions, resize_regions
from mae.data.decode_count import ENV as COUNT_ENV
from mae.data.decode_count import read_decode_counts
from mae.data.store import ImageStore, default_short_side, open_store, use_store
from mae.data.transforms import StoredResizedCrop, sample_crop
from mae.errors import DataError
from tests.data_fixtures import make_class_tree, write_garbage, write_truncated_jpeg

W, H = 120, 90  # 4:3 test images


def aug(**overrides) -> AugmentationConfig:
    return AugmentationConfig().model_copy(update=overrides)


def gradient(w=W, h=H) -> np.ndarray:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return np.stack([x, y, (x * y / 255) % 256], axis=-1).astype(np.uint8)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.fixture
def counted(tmp_path, monkeypatch):
    """Decodes counted into a file (as across processes); returns a function reading the counts."""
    path = tmp_path / "decodes.txt"
    monkeypatch.setenv(COUNT_ENV, str(path))
    return lambda: read_decode_counts(path)


# ------------------------------------------------------------------------------------------ building


def test_built_once_keyed_by_content_and_short_side(tmp_path, counted):
    root = make_class_tree(tmp_path / "data", {"a": 3, "b": 2}, size=(W, H))
    files = [str(p) for p in sorted(root.rglob("*.jpg"))]
    cache = tmp_path / "cache"
    store = open_store(files, 60, label="data", cache_dir=cache)
    assert len(store) == 5 and sum(counted().values()) == 5 and set(counted().values()) == {1}
    assert store.short_side == 60 and store.array(0).shape == (60, 80, 3)  # 120x90 -> short side 60
    again = open_store(reversed(files), 60, label="data", cache_dir=cache)  # any order: the same store
    assert again.folder == store.folder and sum(counted().values()) == 5  # nothing decoded again
    other = open_store(files, 45, label="data", cache_dir=cache)  # another resolution: another store
    assert other.folder != store.folder and other.array(0).shape == (45, 60, 3)
    os.utime(files[0], ns=(1, 1))  # a changed file (modification time): a new store
    assert open_store(files, 60, label="data", cache_dir=cache).folder not in (store.folder, other.folder)
    # images smaller than the short side are kept, never upscaled; pixels match a direct decode
    big = open_store(files, 500, label="data", cache_dir=cache)
    assert np.array_equal(big.array(1), np.asarray(Image.open(files[1]).convert("RGB")))
    assert not list((cache / "stores").glob("*.tmp-*"))  # built in temporary folders, renamed into place


def _open_in_child(files, cache, queue):
    queue.put(str(open_store(files, 40, label="data", cache_dir=cache).folder))


def test_concurrent_processes_build_it_once(tmp_path, counted):
    root = make_class_tree(tmp_path / "data", {"a": 24}, size=(W, H))
    files = [str(p) for p in sorted(root.rglob("*.jpg"))]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_open_in_child, args=(files, tmp_path / "cache", queue)) for _ in range(3)]
    for p in procs:
        p.start()
    folders = {queue.get(timeout=120) for _ in procs}
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(folders) == 1
    assert sum(counted().values()) == 24 and set(counted().values()) == {1}  # each image decoded once


def test_corrupt_images_are_excluded_and_counted(tmp_path, caplog):
    root = make_class_tree(tmp_path / "data", {"a": 4}, size=(W, H))
    write_truncated_jpeg(root / "a" / "broken.jpg")  # a valid header: only decoding finds it
    write_garbage(root / "a" / "garbage.jpg")  # dropped when the dataset is indexed
    ds = ClassFolderDataset(root, build_finetune_transform(aug(input_size=32), stored=True, output="uint8"))
    assert len(ds) == 5 and ds.num_skipped == 1
    store = open_store(ds.files, 40, label="data", cache_dir=tmp_path / "cache")
    assert store.failed == [str(root / "a" / "broken.jpg")]
    use_store(ds, store)
    assert ds.num_skipped == 2  # the dataset's own count: garbage at indexing + the undecodable one
    broken = ds.files.index(str(root / "a" / "broken.jpg"))
    img, _ = ds[broken]  # replaced by the next readable image, as a file failing to decode would be
    assert img.shape == (3, 32, 32)
    with caplog.at_level(logging.WARNING, logger="mae.data"):
        assert ds.report_skipped() == 1
    assert "could not be decoded" in caplog.text and "broken.jpg" in caplog.text
    with pytest.raises(DataError, match="none of the 1 images"):
        bad = make_class_tree(tmp_path / "bad", {"a": 0})
        write_truncated_jpeg(bad / "a" / "x.jpg")
        only = ClassFolderDataset(bad)
        use_store(only, open_store(only.files, 40, label="bad", cache_dir=tmp_path / "cache"))


def test_store_survives_pickling_and_loader_workers(tmp_path):
    import pickle

    root = make_class_tree(tmp_path / "data", {"a": 6, "b": 6}, size=(W, H))
    tf = build_pretrain_transform(aug(input_size=32), stored=True, output="uint8")
    ds = use_store(
        ImageFolderSSL(root, tf), open_store(ImageFolderSSL(root).files, 40, label="d", cache_dir=tmp_path)
    )
    copy = pickle.loads(pickle.dumps(ds.stored.store))
    assert copy._pixels is None and np.array_equal(copy.array(3), ds.stored.store.array(3))
    from mae.engine.data import SeededDataset, SeededSampler

    batches = []
    for workers in (0, 2):
        loader = build_loader(SeededDataset(ds), 4, sampler=SeededSampler(len(ds), 7), num_workers=workers)
        batches.append(torch.cat([b[0] for b in loader]))
    assert batches[0].dtype == torch.uint8 and torch.equal(batches[0], batches[1])


def test_damaged_store_is_a_clear_error(tmp_path):
    root = make_class_tree(tmp_path / "data", {"a": 2}, size=(W, H))
    store = open_store([str(p) for p in root.rglob("*.jpg")], 40, label="d", cache_dir=tmp_path)
    (store.folder / "index.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="damaged.*delete it"):
        ImageStore(store.folder)


def test_default_short_side():
    assert default_short_side(224) == 256 and default_short_side(32) == 36


# ------------------------------------------------------------------------------ augmentation on stored


def test_crop_sampling_matches_torchvision_statistics():
    """sample_crop is torchvision's RandomResizedCrop sampling (docs/data.md's figures for scale 0.1-2.0)."""
    random.seed(0)
    crops = [sample_crop(375, 500, (0.1, 2.0), (0.75, 1.33)) for _ in range(20000)]
    areas = np.array([h * w / (375 * 500) for _, _, h, w in crops])
    whole = (areas > 0.99).mean()
    assert 0.008 < whole < 0.022  # ~1.4% whole-image fallbacks
    kept = areas[areas < 0.99]
    assert abs(kept.mean() - 0.45) < 0.02 and kept.min() > 0.095  # in [0.1, 1], mean 0.45 (docs/data.md)
    assert all(0 <= t and 0 <= left and t + h <= 375 and left + w <= 500 for t, left, h, w in crops)


def test_stored_crop_equals_the_file_pipeline_on_the_same_box():
    """Same box, same flip: the store's crop (torch's antialiased kernel) matches PIL's within 2 levels."""
    img = gradient()
    fixed = dict(min_scale=1.0, max_scale=1.0, min_ratio=W / H, max_ratio=W / H)
    for flip in (0.0, 1.0):
        for interp in ("bilinear", "bicubic"):
            a = aug(input_size=37, hflip=flip, interpolation=interp, **fixed)
            ours = build_pretrain_transform(a, stored=True, output="uint8")(img).int()
            ref = build_pretrain_transform(a, output="uint8")(Image.fromarray(img)).int()
            assert ours.shape == ref.shape == (3, 37, 37)
            assert (ours - ref).abs().max() <= 2, interp


CHANGED = {
    "input_size": 48,
    "mean": [0.3, 0.3, 0.3],
    "std": [0.5, 0.5, 0.5],
    "min_scale": 0.6,
    "max_scale": 0.7,
    "min_ratio": 1.0,
    "max_ratio": 1.0,
    "hflip": 0.0,
    "re_prob": 1.0,
    "interpolation": "bicubic",
    "smoothing": 0.0,
    "color_jitter": 0.4,
    "auto_aug": None,
    "mixup": 0.0,
    "cutmix": 0.0,
    "cutmix_minmax": [0.2, 0.5],
    "mixup_prob": 0.0,
    "mixup_switch_prob": 1.0,
    "mixup_mode": "elem",
}


def stored_finetune_batches(a: AugmentationConfig, images: list[np.ndarray], seeds=range(4)) -> torch.Tensor:
    """The engine's finetune pipeline over stored images: per-image transform, BatchAugment, mixup."""
    tf = build_finetune_transform(a, stored=True, output="uint8")
    batch_aug = BatchAugment(a.mean, a.std, size=a.input_size, re_prob=a.re_prob)
    mixup = build_mixup(a, num_classes=4)
    outs = []
    for s in seeds:
        seed_all(s)
        x = batch_aug(torch.stack([tf(img) for img in images]))
        targets = torch.arange(len(images))
        if mixup is not None:
            x, soft = mixup(x, targets)
        else:
            soft = torch.nn.functional.one_hot(targets, 4).float() * (1 - a.smoothing) + a.smoothing / 4
        outs.append(torch.cat([x.flatten(), soft.flatten()]))
    return torch.cat(outs)


def test_changed_values_cover_every_key():
    assert set(CHANGED) == set(AUGMENTATION_KEYS) == set(AugmentationConfig.model_fields)


@pytest.mark.parametrize("key", AUGMENTATION_KEYS)
def test_every_augmentation_key_acts_on_stored_images(key):
    images = [gradient(), gradient()[:, ::-1].copy(), gradient(80, 100), gradient(100, 75)]
    base = aug(input_size=32)
    changed = base.model_copy(update={key: CHANGED[key]})
    a, b = stored_finetune_batches(base, images), stored_finetune_batches(changed, images)
    assert a.shape != b.shape or not torch.allclose(a, b), f"{key} has no effect on stored images"


def test_pretrain_on_stored_images_flips_and_jitters():
    img = gradient()
    fixed = dict(input_size=32, min_scale=1.0, max_scale=1.0, min_ratio=W / H, max_ratio=W / H)
    plain = build_pretrain_transform(aug(hflip=0.0, **fixed), stored=True)(img)
    flipped = build_pretrain_transform(aug(hflip=1.0, **fixed), stored=True)(img)
    assert torch.allclose(flipped, plain.flip(-1), atol=1e-5) and not torch.allclose(flipped, plain)
    jitter = build_pretrain_transform(aug(hflip=0.0, color_jitter=0.4, **fixed), stored=True)
    seed_all(0)
    one = jitter(img)
    seed_all(1)
    assert not torch.allclose(one, jitter(img))


# --------------------------------------------------------------------------------------- device path


def test_device_path_crops_the_same_boxes_as_the_cpu_path():
    """The GPU path (here on CPU tensors): same draws as the CPU path, so the same crops and flips; only the
    resize kernel differs (ROI-align / per-crop bicubic instead of torch's uint8 kernel)."""
    images = [gradient(), gradient(100, 75), gradient(64, 96)]
    for interp in ("bilinear", "bicubic", "random"):
        a = aug(input_size=48, hflip=0.5, interpolation=interp, min_scale=0.3, max_scale=1.0)
        cpu_tf = build_pretrain_transform(a, stored=True, output="uint8")
        dev_tf = build_pretrain_transform(a, stored=True, output="regions")
        batch_aug = BatchAugment(a.mean, a.std, size=48)
        for seed in range(3):
            samples = []
            for i, img in enumerate(images):
                seed_all(seed * 10 + i)
                samples.append((dev_tf(img), i))
            regions, targets = collate_regions(samples)
            assert isinstance(regions, Regions) and targets.tolist() == [0, 1, 2]
            on_device = batch_aug(regions)
            expected = []
            for i, img in enumerate(images):
                seed_all(seed * 10 + i)
                expected.append(cpu_tf(img))
            ref = batch_aug(torch.stack(expected))
            diff = (on_device - ref).abs() * 0.225 * 255  # back to 0..255 levels
            assert on_device.shape == ref.shape == (3, 3, 48, 48)
            assert diff.mean() < 1.5 and diff.max() < 40, (interp, seed, diff.mean(), diff.max())


def test_resize_regions_matches_interpolate_when_upscaling():
    crop = torch.from_numpy(gradient(30, 20))
    regions = collate_regions(
        [((crop, torch.tensor([0, 0])), 0), ((crop[:10, :12], torch.tensor([1, 0])), 1)]
    )[0]
    out = resize_regions(regions, 40)
    ref = torch.nn.functional.interpolate(crop.permute(2, 0, 1)[None].float(), (40, 40), mode="bilinear")
    assert torch.allclose(out[0], ref[0], atol=1e-3)
    small = crop[:10, :12].permute(2, 0, 1)[None].float()
    ref_small = torch.nn.functional.interpolate(small, (40, 40), mode="bilinear").flip(-1)
    assert torch.allclose(out[1], ref_small[0], atol=1e-3)  # no bleed from the zero padding, flipped


def test_batch_augment_channels_last_and_dtype():
    x = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    out = BatchAugment([0.5] * 3, [0.25] * 3, size=8, channels_last=True)(x)
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, (x.float() / 255 - 0.5) / 0.25, atol=1e-5)
    with pytest.raises(TypeError):
        BatchAugment([0.5] * 3, [0.25] * 3, size=8)(out)
    # reuse_output (the engine on the CPU): one buffer, overwritten by the next batch; fresh tensors otherwise
    reuse = BatchAugment([0.5] * 3, [0.25] * 3, size=8, reuse_output=True)
    first = reuse(x)
    second = reuse(torch.zeros_like(x))
    assert second.data_ptr() == first.data_ptr() and torch.equal(first, second)
    fresh = BatchAugment([0.5] * 3, [0.25] * 3, size=8)
    kept = fresh(x)
    assert torch.allclose(fresh(torch.zeros_like(x)), torch.full_like(kept, -2.0))
    assert torch.allclose(kept, (x.float() / 255 - 0.5) / 0.25, atol=1e-5)  # not overwritten


def test_stored_resized_crop_handles_extreme_ratios():
    crop = StoredResizedCrop(16, (0.1, 2.0), (0.5, 2.0), flip=0.5)
    seed_all(3)
    for _ in range(200):
        assert crop(gradient(37, 23)).shape == (3, 16, 16)


# ------------------------------------------------------------------------------------------ training


def _train(tmp_path, data, *overrides):
    from mae.engine.trainer import run_training
    from mae.spec import load_spec

    cfg = load_spec(
        None,
        [
            f"results_dir={tmp_path}",
            f"dataset.train_data_sources={data}",
            "model.arch=vit_micro_patch4",
            "image_size=32",
            "model.decoder_depth=1",
            "model.decoder_embed_dim=64",
            "dataset.num_workers_per_gpu=0",
            "batch_size=30",
            "train.norm_pix_loss=false",  # the loss then depends on the pixels' scale, which the store must keep
            "train.optim.lr=1e-3",
            *overrides,
        ],
    )
    return run_training(cfg, mlflow=False, enable_progress_bar=False)


@pytest.mark.slow
def test_training_with_the_store_decodes_once_and_matches_training_without(
    tmp_path, digits_small, counted, monkeypatch
):
    from mae.data.sources import default_cache_dir

    data = digits_small["train"]
    n = sum(1 for _ in data.rglob("*.png"))
    on = _train(tmp_path / "on", data, "num_epochs=3", "dataset.store_short_side=24")
    decodes = counted()
    assert len(decodes) == n and set(decodes.values()) == {1}  # every image once, for three epochs
    (store,) = default_cache_dir().glob("stores/train-24px-*")  # dataset.store_short_side: 32 px -> 24
    assert ImageStore(store).array(0).shape == (24, 24, 3)
    monkeypatch.setenv(COUNT_ENV, str(tmp_path / "off.txt"))
    off = _train(tmp_path / "off", data, "num_epochs=3", "dataset.store=false")
    off_decodes = read_decode_counts(tmp_path / "off.txt")
    assert len(off_decodes) == n and set(off_decodes.values()) == {3}  # every image at every epoch
    a, b = on.metrics["train_loss"], off.metrics["train_loss"]
    assert abs(a - b) / b < 0.15, (a, b)  # the same loss band: only the augmentation draws differ


def test_engine_pipeline_picks_the_device_path_only_where_it_can(tmp_path, digits_small):
    """training_pipeline: crops resized on the GPU for stored images without per-image PIL operations (MAE
    pretraining), in the workers otherwise; either way the loader yields what BatchAugment finishes."""
    from mae.engine.data import make_loader, ssl_dataset, training_pipeline, use_decoded_store
    from mae.spec import load_spec

    base = [f"results_dir={tmp_path}", "image_size=32", "dataset.num_workers_per_gpu=0", "batch_size=8"]
    cfg = load_spec(None, base)
    on_gpu = training_pipeline(cfg, cuda=True)
    assert "on the GPU" in on_gpu.description and on_gpu.collate_fn is collate_regions
    ds = use_decoded_store(ssl_dataset(str(digits_small["train"]), "k", on_gpu.transform), cfg)
    regions, _ = next(iter(make_loader(ds, cfg, train=True, collate_fn=on_gpu.collate_fn)))
    assert isinstance(regions, Regions) and regions.pixels.dtype == torch.uint8
    out = on_gpu.batch_augment(regions)  # here on CPU tensors; on CUDA after the copy to the device
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    for overrides, where in [
        ([], "in the loader workers"),  # no CUDA
        (["dataset.augmentation.color_jitter=0.2"], "in the loader workers"),  # a PIL op follows the crop
        (["dataset.store=false"], "image files"),
    ]:
        pipeline = training_pipeline(load_spec(None, base + overrides), cuda=bool(overrides))
        assert where in pipeline.description and pipeline.collate_fn is None
    finetune = training_pipeline(load_spec(None, [*base, "stage=finetune", "num_classes=10"]), cuda=True)
    assert "in the loader workers" in finetune.description  # auto_aug (RandAugment) runs on PIL images

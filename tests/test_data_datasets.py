"""Datasets: which files are read, class order, corrupt/truncated images skipped and counted (also with
DataLoader workers), empty datasets are clear errors, loaders."""

from __future__ import annotations

import logging
import pickle

import pytest
import torch

import mae.data.sources as sources
from mae.data import (
    ClassFolderDataset,
    ImageFolderSSL,
    ImageListDataset,
    build_loader,
    find_classes,
    find_images,
    resolve_source,
)
from mae.errors import DataError
from tests.data_fixtures import (
    make_class_tree,
    make_tar,
    write_garbage,
    write_image,
    write_truncated_jpeg,
)


def to_tensor(img):
    import numpy as np

    return torch.from_numpy(np.array(img.resize((16, 16)))).permute(2, 0, 1).float()


def warnings_from(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "mae.data"]


def test_ssl_reads_every_image_format_in_any_layout(tmp_path):
    for name in ["a.jpg", "b.JPEG", "sub/c.png", "sub/deeper/d.bmp", "e.webp", "f.tif", "g.Jpg"]:
        write_image(tmp_path / name.replace("JPEG", "jpeg").replace("Jpg", "jpg"))
    (tmp_path / "sub" / "deeper" / "d.bmp").rename(tmp_path / "sub" / "deeper" / "d.BMP")
    write_image(tmp_path / ".hidden.jpg")
    write_image(tmp_path / "._a.jpg")  # a macOS resource fork, not an image
    write_image(tmp_path / "__MACOSX" / "x.jpg")
    write_image(tmp_path / ".cache" / "y.jpg")
    (tmp_path / "labels.txt").write_text("not an image")
    found = [p.relative_to(tmp_path).as_posix() for p in find_images(tmp_path)]
    assert found == ["a.jpg", "b.jpeg", "e.webp", "f.tif", "g.jpg", "sub/c.png", "sub/deeper/d.BMP"]

    ds = ImageFolderSSL(tmp_path, to_tensor)
    assert len(ds) == 7
    img, target = ds[0]
    assert img.shape == (3, 16, 16) and target == 0


def test_symlinked_folders_are_followed_once(tmp_path):
    write_image(tmp_path / "real" / "a.jpg")
    (tmp_path / "real" / "loop").symlink_to(tmp_path / "real")  # a cycle
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    files = find_images(tmp_path)
    assert len(files) == 1  # reached through alias/ or real/, but only once


def test_unreadable_files_are_skipped_at_indexing_with_one_summary_line(tmp_path, caplog):
    for i in range(3):
        write_image(tmp_path / f"ok{i}.jpg")
    write_garbage(tmp_path / "garbage.jpg")
    write_garbage(tmp_path / "empty.png", b"")
    write_garbage(tmp_path / "html.webp", b"<html>404 not found</html>")
    with caplog.at_level(logging.WARNING, logger="mae.data"):
        ds = ImageFolderSSL(tmp_path, to_tensor)
    assert len(ds) == 3 and ds.num_skipped == 3
    lines = warnings_from(caplog)
    assert len(lines) == 1
    assert "skipped 3 of 6 image files" in lines[0] and "cannot identify image file" in lines[0]
    assert "Traceback" not in caplog.text


def test_truncated_image_is_skipped_at_load_time_in_worker_processes(tmp_path, caplog):
    """A truncated JPEG has a valid header, so only decoding finds it: inside a DataLoader worker. The
    sample is replaced, batches stay full, and the parent logs one line with the count."""
    for i in range(7):
        write_image(tmp_path / f"ok{i}.jpg")
    bad = write_truncated_jpeg(tmp_path / "ok3_truncated.jpg")
    ds = ImageFolderSSL(tmp_path, to_tensor)
    assert len(ds) == 8 and ds.num_skipped == 0  # the header check passes it
    loader = build_loader(ds, batch_size=4, num_workers=2, persistent_workers=False)
    with caplog.at_level(logging.WARNING, logger="mae.data"):
        sizes = [batch[0].shape[0] for batch in loader]
        sizes += [batch[0].shape[0] for batch in loader]  # a second epoch: counted once, not reported again
    assert sizes == [4, 4, 4, 4]
    assert ds.failed_files == [str(bad)]  # marked by a worker, visible in the parent
    lines = warnings_from(caplog)
    assert len(lines) == 1, lines
    assert "1 image(s) could not be decoded" in lines[0] and "ok3_truncated.jpg" in lines[0]
    assert "Traceback" not in caplog.text


def test_inference_drops_undecodable_images_and_skips_empty_batches(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"img{i}.jpg")
    write_truncated_jpeg(tmp_path / "img1_truncated.jpg")
    ds = ImageListDataset(tmp_path, to_tensor)
    loader = build_loader(ds, batch_size=1, num_workers=0)
    names = [name for _, names in loader for name in names]
    assert names == [str((tmp_path / f"img{i}.jpg").resolve()) for i in range(3)]
    assert ds.num_skipped == 1


def test_empty_sources_are_clear_errors_naming_the_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty: no images found"):
        ImageFolderSSL(tmp_path / "empty", to_tensor)
    write_garbage(tmp_path / "broken" / "a.jpg")
    with pytest.raises(DataError, match=r"broken: none of the 1 image files is readable"):
        ImageListDataset(tmp_path / "broken", to_tensor)
    with pytest.raises(DataError, match=r"data folder not found: .*missing"):
        ImageFolderSSL(tmp_path / "missing", to_tensor)
    (tmp_path / "noclasses").mkdir()
    write_image(tmp_path / "noclasses" / "a.jpg")
    with pytest.raises(DataError, match=r"noclasses: no class subfolders found"):
        ClassFolderDataset(tmp_path / "noclasses", to_tensor)


def test_class_folders_have_a_stable_sorted_order(tmp_path, caplog):
    make_class_tree(tmp_path, {"zebra": 2, "Apple": 1, "mango": 3})
    (tmp_path / "empty_class").mkdir()
    write_image(tmp_path / "__MACOSX" / "._a.jpg")  # archive debris, not a class
    write_image(tmp_path / ".thumbnails" / "a.jpg")
    write_image(tmp_path / "loose.jpg")
    write_image(tmp_path / "mango" / "nested" / "deep.png")
    with caplog.at_level(logging.WARNING, logger="mae.data"):
        ds = ClassFolderDataset(tmp_path, to_tensor)
    assert ds.classes == ["Apple", "empty_class", "mango", "zebra"] == find_classes(tmp_path)
    assert ds.class_to_idx == {"Apple": 0, "empty_class": 1, "mango": 2, "zebra": 3}
    assert sorted(ds.targets) == [0, 2, 2, 2, 2, 3, 3]
    assert ds[ds.targets.index(3)][1] == 3
    text = " ".join(warnings_from(caplog))
    assert "ignored 1 image(s) lying directly in the folder" in text
    assert "without images: empty_class" in text


def test_given_classes_fix_the_order_and_unknown_folders_are_errors(tmp_path):
    make_class_tree(tmp_path / "val", {"cat": 1, "dog": 1})
    ds = ClassFolderDataset(tmp_path / "val", to_tensor, classes=["dog", "cat", "bird"])
    assert ds.class_to_idx == {"dog": 0, "cat": 1, "bird": 2}
    assert {ds[i][1] for i in range(len(ds))} == {0, 1}
    with pytest.raises(DataError, match=r"class folder\(s\) cat are not among the 2 expected classes"):
        ClassFolderDataset(tmp_path / "val", to_tensor, classes=["dog", "bird"])


def test_several_roots_form_one_dataset(tmp_path):
    make_class_tree(tmp_path / "r1", {"cat": 1})
    make_class_tree(tmp_path / "r2", {"dog": 2, "cat": 1})
    ds = ClassFolderDataset([tmp_path / "r1", tmp_path / "r2"], to_tensor)
    assert ds.classes == ["cat", "dog"] and len(ds) == 4


def test_inference_names_files_of_archives_by_their_source(tmp_path):
    tree = make_class_tree(tmp_path / "images_test", {"a": 2})
    archive = make_tar(tmp_path / "images_test.tar.gz", tree)
    root = resolve_source(archive, cache_dir=tmp_path / "cache")
    ds = ImageListDataset(root, to_tensor)
    assert ds.names == [f"{archive}/images_test/a/000.jpg", f"{archive}/images_test/a/001.jpg"]
    assert ds[1][1] == f"{archive}/images_test/a/001.jpg"
    # prepared by another process (nothing remembered here): the cache entry's metadata names the source
    sources._LABELS.clear()
    assert ImageListDataset(root, to_tensor).names == ds.names
    plain = ImageListDataset(tree, to_tensor).names  # a local folder: absolute paths
    assert plain == [str((tree / "a" / f"00{i}.jpg").resolve()) for i in range(2)]


def test_dataset_pickles_outside_worker_start(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_truncated_jpeg(tmp_path / "b.jpg")
    ds = ImageFolderSSL(tmp_path, to_tensor)
    ds[1]  # marks b.jpg
    clone = pickle.loads(pickle.dumps(ds))  # e.g. shipped to a Ray worker
    assert clone.failed_files == ds.failed_files and len(clone) == 2


def test_loader_seed_fixes_the_order_and_defaults(tmp_path):
    for i in range(12):
        write_image(tmp_path / f"{i:02d}.jpg", color=(i * 20, 0, 0))
    ds = ImageListDataset(tmp_path, to_tensor)

    def order(seed):
        return [n for _, names in build_loader(ds, 4, shuffle=True, seed=seed) for n in names]

    assert order(1) == order(1)
    assert order(1) != order(2)
    assert sorted(order(1)) == sorted(ds.names)
    loader = build_loader(ds, 4, num_workers=2, drop_last=True)
    assert loader.persistent_workers and loader.pin_memory == torch.cuda.is_available()
    assert build_loader(ds, 5, drop_last=True).__len__() == 2
    with pytest.raises(ValueError, match="either shuffle"):
        build_loader(ds, 4, shuffle=True, sampler=list(range(12)))


def test_large_jpegs_are_decoded_at_reduced_scale_without_losing_needed_detail(tmp_path):
    from mae.config import AugmentationConfig
    from mae.data import build_eval_transform, load_rgb

    big = write_image(tmp_path / "big.jpg", size=(2048, 1536))
    small = write_image(tmp_path / "small.jpg", size=(400, 300))
    assert load_rgb(big, min_side=256).size == (512, 384)  # 1/4 scale: the short side stays >= 256
    assert load_rgb(big).size == (2048, 1536)
    assert load_rgb(small, min_side=256).size == (400, 300)  # not twice as large: decoded fully

    tf = build_eval_transform(AugmentationConfig(input_size=224))
    ds = ImageListDataset(tmp_path, tf)
    fast = dict(zip(ds.names, (x for x, _ in (ds[i] for i in range(len(ds)))), strict=True))[
        str(big.resolve())
    ]
    full = tf(load_rgb(big))
    assert fast.shape == full.shape == (3, 224, 224)
    assert (fast - full).abs().mean() < 0.05  # ~3 grey levels: the same picture

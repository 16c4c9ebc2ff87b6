"""No setting ignored in silence: a combination that cannot act is an error or one notice line (via the CLI)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from PIL import Image


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "img" / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "img" / "a" / "x.png")
    return tmp_path


def _cli(*argv: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_mixup_with_an_odd_batch_is_a_spec_error(folder):
    (folder / "s.yaml").write_text("train: {stage: finetune}\n")
    base = [
        "mae.cli",
        "train",
        "-e",
        "s.yaml",
        "--print-config",
        f"dataset.train_data_sources={folder / 'img'}",
    ]
    r = _cli(
        *base,
        "dataset.batch_size=33",
        "dataset.augmentation.cutmix=1.0",
        "dataset.augmentation.mixup=0",
        cwd=folder,
    )
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "mae: error: dataset.batch_size=33 with dataset.augmentation.cutmix=1.0: mixup/cutmix need an even batch "
        "size per device; use 34 or turn them off"
    ]
    assert "Traceback" not in r.stderr
    assert _cli(*base, "dataset.batch_size=34", cwd=folder).returncode == 0  # even: fine
    ok = _cli(
        *base,
        "dataset.batch_size=33",
        "dataset.augmentation.mixup=0",
        "dataset.augmentation.cutmix=0",
        cwd=folder,
    )
    assert ok.returncode == 0  # mixup off: any batch size


def _search_notices(folder, *flags: str) -> list[str]:
    """Run `automl run` until it stops at a missing validation folder (after planning, before Ray starts)."""
    (folder / "s.yaml").write_text("train: {num_epochs: 3}\n")
    r = _cli(
        "automl.cli",
        "run",
        "-e",
        "s.yaml",
        *flags,
        f"dataset.train_data_sources={folder / 'img'}",
        f"dataset.val_data_sources={folder / 'missing'}",
        cwd=folder,
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("automl: error: dataset.val_data_sources=")
    return [
        line
        for line in r.stdout.splitlines()
        if "has no effect" in line or "applies to" in line or "more than" in line
    ]


@pytest.mark.slow  # each case starts Python with torch/Ray imports (~10 s)
@pytest.mark.parametrize(
    "flags, expected",
    [
        (
            ["--algorithm", "bayesian", "--grace-period", "2"],
            ["--grace-period has no effect with the fifo scheduler"],
        ),
        (
            ["--scheduler", "fifo", "--reduction-factor", "2"],
            ["--reduction-factor has no effect with the fifo"],
        ),
        (["--perturbation-interval", "2"], ["--perturbation-interval has no effect with the asha scheduler"]),
        (["--grace-period", "5"], ["--grace-period 5 is more than the 3 epochs a trial trains; using 3"]),
        (
            ["--gpus-per-trial", "0.5", "train.num_gpus=2"],
            ["--gpus-per-trial 0.5 applies to single-device trials"],
        ),
        (["--grace-period", "2"], []),
    ],
)
def test_search_options_that_cannot_act_get_one_line_each(folder, flags, expected):
    notices = _search_notices(folder, *flags)
    assert len(notices) == len(expected), notices
    for line, start in zip(notices, expected, strict=True):
        assert line.startswith("automl: " + start)

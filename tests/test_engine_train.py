"""Training runs on real images (scikit-learn digits) with tiny models on the CPU."""

from __future__ import annotations

import json
import sqlite3

import pytest
import pytorch_lightning as pl
import torch

from mae.engine.checkpoints import load_checkpoint_file
from mae.engine.modules import NonFiniteLossError
from mae.engine.trainer import run_training
from mae.errors import CheckpointError, ConfigError
from mae.spec import load_spec

TINY = [
    "model.arch=vit_tiny_patch4",
    "image_size=32",
    "model.decoder_depth=1",
    "model.decoder_embed_dim=64",
    "dataset.augmentation.hflip=0.0",
    "dataset.augmentation.min_scale=0.5",
    "dataset.augmentation.max_scale=1.0",
    "dataset.num_workers_per_gpu=0",
]


def spec(tmp_path, *overrides, action="train"):
    return load_spec(None, [f"results_dir={tmp_path}", *TINY, *overrides], action=action)


def state(ckpt_path) -> dict[str, torch.Tensor]:
    return load_checkpoint_file(ckpt_path)["state_dict"]


def status_lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class CrashAtEpoch(pl.Callback):
    """Simulates a crash at the start of an epoch, after the previous epoch's checkpoint was written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated crash")


def test_resume_after_crash_equals_uninterrupted(tmp_path, digits_small):
    common = [
        f"dataset.train_data_sources={digits_small['val']}",
        "batch_size=20",
        "num_epochs=2",
        "train.optim.lr_scheduler=cosine",
        "train.optim.warmup_epochs=1",
    ]
    full = run_training(spec(tmp_path / "a", *common), mlflow=False)
    cfg = spec(tmp_path / "b", *common)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run_training(cfg, mlflow=False, callbacks=[CrashAtEpoch(1)])
    assert status_lines(tmp_path / "b" / "train" / "status.json")[-1]["status"] == "FAILURE"
    resumed = run_training(cfg, mlflow=False)  # finds train/checkpoints/last.ckpt by itself
    a, b = state(full.last_checkpoint), state(resumed.last_checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert load_checkpoint_file(resumed.last_checkpoint)["epoch"] == 1


def test_nan_loss_stops_with_failure_status(tmp_path, digits_small):
    class Poison(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.current_epoch == 1:
                with torch.no_grad():
                    next(pl_module.model.parameters()).fill_(float("nan"))

    cfg = spec(tmp_path, f"dataset.train_data_sources={digits_small['val']}", "batch_size=30", "num_epochs=2")
    with pytest.raises(NonFiniteLossError, match="loss became nan at epoch 1"):
        run_training(cfg, mlflow=True, callbacks=[Poison()])
    last = status_lines(tmp_path / "train" / "status.json")[-1]
    assert last["status"] == "FAILURE" and "loss became nan" in last["message"]
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        assert db.execute("select status from runs").fetchall() == [("FAILED",)]


def test_num_classes_mismatch(tmp_path, digits_small):
    cfg = spec(
        tmp_path, f"dataset.train_data_sources={digits_small['train']}", "stage=finetune", "num_classes=5"
    )
    with pytest.raises(
        ConfigError, match="model.num_classes=5 but dataset.train_data_sources has 10 class folders"
    ):
        run_training(cfg, mlflow=False)


def test_resume_refuses_other_stage(tmp_path, digits_small):
    src = [f"dataset.train_data_sources={digits_small['val']}", "batch_size=60", "num_epochs=1"]
    run_training(spec(tmp_path, *src), mlflow=False)
    cfg = spec(tmp_path, *src, "stage=finetune", "num_classes=10")
    with pytest.raises(CheckpointError, match="it is a pretrain checkpoint but the spec says stage=finetune"):
        run_training(cfg, mlflow=False)


def test_freeze_unknown_prefix(tmp_path, digits_small):
    cfg = spec(tmp_path, f"dataset.train_data_sources={digits_small['train']}", "train.freeze=[encoder]")
    with pytest.raises(ConfigError, match=r"train.freeze: \['encoder'\] match no parameter"):
        run_training(cfg, mlflow=False)


@pytest.mark.slow
def test_pretrain_then_finetune_on_digits(tmp_path, digits, capsys):
    """Pretraining lowers train_loss and its kNN accuracy beats chance; finetuning from it classifies digits."""
    data = [
        f"dataset.train_data_sources={digits['train']}",
        f"dataset.val_data_sources={digits['val']}",
        f"dataset.test_data_sources={digits['test']}",
    ]
    history: list[dict] = []
    pre = run_training(
        spec(
            tmp_path / "pre",
            *data,
            "batch_size=64",
            "num_epochs=6",
            "train.optim.lr=1.5e-3",
            "train.optim.lr_scheduler=cosine",
            "train.optim.warmup_epochs=1",
            "train.optim.monitor_name=knn_acc",
        ),
        on_epoch=lambda e, m: history.append(m),
    )
    assert pre.best_checkpoint.name == "best.ckpt" and len(history) == 6
    assert history[-1]["train_loss"] < 0.8 * history[0]["train_loss"]
    assert history[-1]["knn_acc"] > 0.5  # chance is 0.1
    ft = run_training(
        spec(
            tmp_path / "ft",
            *data,
            "stage=finetune",
            "num_classes=10",
            "batch_size=64",
            "num_epochs=5",
            "train.optim.lr=2e-3",
            "train.optim.lr_scheduler=cosine",
            "train.optim.warmup_epochs=1",
            "train.optim.monitor_name=ACC_all",
            f"train.pretrained_model_path={tmp_path / 'pre'}",
            "dataset.augmentation.auto_aug=null",
            "dataset.augmentation.mixup=0",
            "dataset.augmentation.cutmix=0",
        )
    )
    assert ft.metrics["ACC_all"] >= 0.85
    from mae.actions import run_action

    cfg = spec(
        tmp_path / "ft",
        *data,
        "stage=finetune",
        "num_classes=10",
        f"evaluate.checkpoint={tmp_path / 'ft' / 'train'}",
        action="evaluate",
    )
    m = run_action("evaluate", cfg)
    assert m["ACC_all"] >= 0.85 and m["ACC_top5"] >= m["ACC_all"]
    assert (tmp_path / "ft" / "evaluate" / "confusion_matrix.png").stat().st_size > 1000
    cfg = spec(
        tmp_path / "ft",
        *data,
        "stage=finetune",
        "num_classes=10",
        f"inference.checkpoint={ft.best_checkpoint}",
        action="inference",
    )
    run_action("inference", cfg)
    rows = (tmp_path / "ft" / "inference" / "results.csv").read_text().splitlines()
    assert rows[0] == "path,class_name,class_index,score" and len(rows) == 1 + 360
    # MLflow: one run per training with per-epoch train_loss
    with sqlite3.connect(tmp_path / "pre" / "mlflow.db") as db:
        steps = db.execute("select step from metrics where key='train_loss' order by step").fetchall()
    assert [s for (s,) in steps] == list(range(6))

"""Every spec field of `train`, `dataset` and `model` takes effect: each has a test below that would fail if the
field were ignored. `test_every_field_is_covered` keeps this table complete when fields are added.
(The augmentation keys are covered one by one in tests/test_data_transforms.py.)"""

from __future__ import annotations

import json
import logging

import pytest
import pytorch_lightning as pl
import torch

from mae.config import AugmentationConfig
from mae.engine import trainer as T
from mae.engine.checkpoints import load_checkpoint_file
from mae.engine.modules import build_optimizer
from mae.spec import all_keys, load_spec

TINY = [
    "model.arch=vit_micro_patch4",
    "image_size=32",
    "model.decoder_depth=1",
    "model.decoder_embed_dim=64",
    "dataset.num_workers_per_gpu=0",
    "dataset.augmentation.hflip=0.0",
]

COVERED = {
    "dataset.batch_size": "test_short_run_fields",
    "dataset.num_workers_per_gpu": "test_loader_fields",
    "dataset.train_data_sources": "test_short_run_fields",
    "dataset.val_data_sources": "test_short_run_fields",
    "dataset.test_data_sources": "test_engine_train.py::test_pretrain_then_finetune_on_digits",
    "dataset.store": "test_data_store.py::test_training_with_the_store_decodes_once_and_matches_training_without",
    "dataset.store_short_side": "test_data_store.py::test_training_with_the_store_decodes_once_and_matches_"
    "training_without",
    "model.arch": "test_network_fields",
    "model.num_classes": "test_network_fields",
    "model.drop_path_rate": "test_network_fields",
    "model.global_pool": "test_network_fields",
    "model.decoder_depth": "test_network_fields",
    "model.decoder_embed_dim": "test_network_fields",
    "train.num_gpus": "test_device_fields",
    "train.gpu_ids": "test_device_fields",
    "train.num_nodes": "test_device_fields",
    "train.seed": "test_seed",
    "train.cudnn.benchmark": "test_cudnn",
    "train.cudnn.deterministic": "test_cudnn",
    "train.num_epochs": "test_short_run_fields",
    "train.checkpoint_interval": "test_short_run_fields",
    "train.checkpoint_interval_unit": "test_step_checkpoints",
    "train.validation_interval": "test_short_run_fields",
    "train.resume_training_checkpoint_path": "test_explicit_resume_and_pretrained_weights",
    "train.results_dir": "test_short_run_fields",
    "train.stage": "test_network_fields",
    "train.accum_grad_batches": "test_short_run_fields",
    "train.pretrained_model_path": "test_explicit_resume_and_pretrained_weights",
    "train.precision": "test_device_fields",
    "train.distributed_strategy": "test_device_fields",
    "train.mask_ratio": "test_network_fields",
    "train.norm_pix_loss": "test_network_fields",
    "train.freeze": "test_short_run_fields",
    "train.compile": "test_engine_speed.py::test_train_compile_field_trains",
    "train.optim.type": "test_optimizer_fields",
    "train.optim.monitor_name": "test_short_run_fields",
    "train.optim.lr": "test_optimizer_fields",
    "train.optim.backbone_multiplier": "test_optimizer_fields",
    "train.optim.momentum": "test_optimizer_fields",
    "train.optim.weight_decay": "test_optimizer_fields",
    "train.optim.layer_decay": "test_optimizer_fields",
    "train.optim.lr_scheduler": "test_optimizer_fields",
    "train.optim.milestones": "test_optimizer_fields",
    "train.optim.gamma": "test_optimizer_fields",
    "train.optim.warmup_epochs": "test_optimizer_fields",
}


def test_every_field_is_covered():
    keys = {k for k in all_keys() if k.split(".")[0] in ("train", "dataset", "model")}
    keys -= {f"dataset.augmentation.{k}" for k in AugmentationConfig.model_fields}
    assert keys == set(COVERED)


def cfg_of(tmp_path, *overrides):
    return load_spec(None, [f"results_dir={tmp_path}", *TINY, *overrides])


def test_network_fields(tmp_path):
    net, meta = T.build_network(
        cfg_of(
            tmp_path,
            "train.mask_ratio=0.6",
            "train.norm_pix_loss=false",
            "model.decoder_depth=3",
            "model.decoder_embed_dim=96",
            "image_size=48",
        )
    )
    assert type(net).__name__.startswith("ViT") or hasattr(net, "decoder_blocks")
    assert len(net.decoder_blocks) == 3 and net.decoder_embed.out_features == 96
    assert net.mask_ratio == 0.6 and net.norm_pix_loss is False and net.num_patches == (48 // 4) ** 2
    assert meta == {
        "stage": "pretrain",
        "arch": "vit_micro_patch4",
        "img_size": 48,
        "decoder_depth": 3,
        "decoder_embed_dim": 96,
        "norm_pix_loss": False,
    }
    clf, meta = T.build_network(
        cfg_of(
            tmp_path, "stage=finetune", "num_classes=7", "model.drop_path_rate=0.3", "model.global_pool=false"
        )
    )
    assert clf.head.out_features == 7 and meta["num_classes"] == 7
    assert clf.blocks[-1].drop_path1.drop_prob == pytest.approx(0.3)
    assert clf.global_pool == "token" and isinstance(clf.fc_norm, torch.nn.Identity)
    clf, _ = T.build_network(cfg_of(tmp_path, "stage=finetune", "model.global_pool=true"))
    assert clf.global_pool == "avg" and isinstance(clf.fc_norm, torch.nn.LayerNorm)
    other, _ = T.build_network(cfg_of(tmp_path, "model.arch=vit_tiny_patch4"))
    assert other.patch_embed.proj.out_channels == 192  # the arch decides the network


def test_device_fields(monkeypatch, caplog):
    from pytorch_lightning.strategies import DDPStrategy

    plan = T.plan_devices(load_spec(None, ["train.num_gpus=2", "train.num_nodes=3", "train.precision=bf16"]))
    assert plan.accelerator == "cpu" and plan.devices == 2 and plan.num_nodes == 3
    assert plan.precision == "bf16-mixed" and isinstance(plan.strategy, DDPStrategy)
    assert plan.strategy._ddp_kwargs["find_unused_parameters"] is True
    assert plan.strategy._process_group_backend == "gloo" and plan.strategy._start_method == "spawn"
    with caplog.at_level(logging.WARNING, logger="mae"):
        plan = T.plan_devices(
            load_spec(None, ["train.precision=fp16", "train.distributed_strategy=fsdp", "train.num_gpus=2"])
        )
    assert plan.precision == "bf16-mixed" and isinstance(plan.strategy, DDPStrategy)
    assert "fp16 needs a GPU" in caplog.text and "fsdp needs GPUs" in caplog.text
    # with GPUs: gpu_ids pick the devices, fsdp is used and forces 16-bit precision
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    plan = T.plan_devices(load_spec(None, ["train.num_gpus=2", "train.gpu_ids=[1,3]"]))
    assert plan.accelerator == "gpu" and plan.devices == [1, 3] and plan.precision == "32-true"
    plan = T.plan_devices(load_spec(None, ["train.num_gpus=2", "train.distributed_strategy=fsdp"]))
    assert type(plan.strategy).__name__ == "FSDPStrategy" and plan.precision == "16-mixed"
    with pytest.raises(Exception, match="this machine has 4 GPU"):
        T.plan_devices(load_spec(None, ["train.num_gpus=1", "train.gpu_ids=[5]"]))
    monkeypatch.setenv("NUM_GPU_PER_NODE", "4")  # a multi-node launcher's per-node count wins
    assert T.plan_devices(load_spec(None, [])).devices == [0, 1, 2, 3]


def test_cudnn():
    T.apply_cudnn(load_spec(None, ["train.cudnn.benchmark=true", "train.cudnn.deterministic=false"]))
    assert torch.backends.cudnn.benchmark is True and torch.backends.cudnn.deterministic is False
    T.apply_cudnn(load_spec(None, []))
    assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True


def test_optimizer_fields(tmp_path):
    cfg = cfg_of(
        tmp_path,
        "stage=finetune",
        "train.optim.lr=1e-3",
        "train.optim.momentum=0.8",
        "train.optim.weight_decay=0.2",
        "train.optim.layer_decay=0.5",
        "train.optim.backbone_multiplier=0.1",
        "train.optim.lr_scheduler=MultiStep",
        "train.optim.milestones=[2]",
        "train.optim.gamma=0.3",
        "train.optim.warmup_epochs=1",
        "num_epochs=4",
    )
    net, _ = T.build_network(cfg)
    opt, sched = build_optimizer(cfg, net, total_steps=40, num_epochs=4)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.95)
    decays = {g["weight_decay"] for g in opt.param_groups}
    assert decays == {0.0, 0.2}  # norms/biases/tokens exempt
    head = next(g for g in opt.param_groups if any(p is net.head.weight for p in g["params"]))
    first = next(g for g in opt.param_groups if any(p is net.patch_embed.proj.weight for p in g["params"]))
    assert head["initial_lr"] == pytest.approx(1e-3)  # the head: full lr, no backbone multiplier
    # patch embedding: layer 0 of 4 blocks -> 0.5 ** 5 layer decay, times the backbone multiplier
    assert first["initial_lr"] == pytest.approx(1e-3 * 0.5**5 * 0.1)
    factors = [sched.lr_lambdas[0](s) for s in (0, 5, 10, 19, 20, 39)]
    assert factors == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.3, 0.3])  # 1 warmup epoch, x0.3 from epoch 2
    cosine = cfg_of(tmp_path, "train.optim.lr_scheduler=cosine", "num_epochs=4")
    _, sched = build_optimizer(cosine, T.build_network(cosine)[0], total_steps=40, num_epochs=4)
    assert sched.lr_lambdas[0](20) == pytest.approx(0.5) and sched.lr_lambdas[0](40) == pytest.approx(0.0)
    # pretraining: no layer decay; the encoder (not the decoder) gets the backbone multiplier
    pre = cfg_of(tmp_path, "train.optim.layer_decay=0.5", "train.optim.backbone_multiplier=0.1")
    net, _ = T.build_network(pre)
    opt, _ = build_optimizer(pre, net, total_steps=10, num_epochs=1)
    lr_of = {id(p): g["initial_lr"] for g in opt.param_groups for p in g["params"]}
    assert lr_of[id(net.blocks[0].attn.qkv.weight)] == pytest.approx(2e-4 * 0.1)
    assert lr_of[id(net.decoder_embed.weight)] == pytest.approx(2e-4)


def test_loader_fields(tmp_path, digits_small):
    from mae.engine.data import make_loader, ssl_dataset

    cfg = cfg_of(tmp_path, "dataset.num_workers_per_gpu=3", "batch_size=7")
    loader = make_loader(ssl_dataset(str(digits_small["train"]), "k", lambda x: x), cfg, train=True)
    assert loader.num_workers == 3 and loader.batch_size == 7 and loader.persistent_workers


class Spy(pl.Callback):
    """Records the trained parameters before fit and each epoch's optimizer step count."""

    def __init__(self):
        self.steps, self.before = [], {}

    def on_fit_start(self, trainer, pl_module):
        self.before = {k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()}

    def on_train_epoch_end(self, trainer, pl_module):
        self.steps.append(trainer.global_step)


def test_short_run_fields(tmp_path, digits_small):
    spy = Spy()
    history = []
    out = tmp_path / "elsewhere"
    cfg = cfg_of(
        tmp_path,
        f"dataset.train_data_sources={digits_small['val']}",
        f"dataset.val_data_sources={digits_small['val']}",
        "batch_size=20",
        "num_epochs=3",
        "train.checkpoint_interval=2",
        "train.validation_interval=2",
        "train.accum_grad_batches=3",
        "train.freeze=[patch_embed]",
        f"train.results_dir={out}",
        "train.optim.monitor_name=val_loss",
    )
    result = T.run_training(cfg, mlflow=False, callbacks=[spy], on_epoch=lambda e, m: history.append(m))
    assert result.results_dir == out and (out / "status.json").is_file()  # train.results_dir
    assert len(history) == 3  # num_epochs
    assert ["val_loss" in m for m in history] == [False, True, False]  # validation_interval
    assert spy.steps == [1, 2, 3]  # 60 images / batch 20 = 3 batches = one optimizer step per epoch
    names = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert names == ["best.ckpt", "epoch-1.ckpt", "last.ckpt"]  # checkpoint_interval=2 epochs
    assert result.monitor == "val_loss" and result.best_score == pytest.approx(history[1]["val_loss"])
    after = load_checkpoint_file(out / "checkpoints" / "last.ckpt")["state_dict"]
    assert torch.equal(
        after["model.patch_embed.proj.weight"], spy.before["patch_embed.proj.weight"]
    )  # frozen
    assert not torch.equal(after["model.blocks.0.attn.qkv.weight"], spy.before["blocks.0.attn.qkv.weight"])
    assert history[0]["images_per_sec"] > 0 and "knn_acc" in history[1]


def test_step_checkpoints(tmp_path, digits_small):
    cfg = cfg_of(
        tmp_path,
        f"dataset.train_data_sources={digits_small['val']}",
        "batch_size=20",
        "num_epochs=2",
        "train.checkpoint_interval=2",
        "train.checkpoint_interval_unit=step",
    )
    T.run_training(cfg, mlflow=False)
    names = sorted(p.name for p in (tmp_path / "train" / "checkpoints").iterdir())
    assert names == ["best.ckpt", "last.ckpt", "step-2.ckpt", "step-4.ckpt", "step-6.ckpt"]


def test_seed(tmp_path, digits_small):
    def weights(seed, name):
        cfg = cfg_of(
            tmp_path / name,
            f"dataset.train_data_sources={digits_small['val']}",
            "batch_size=30",
            "num_epochs=1",
            f"train.seed={seed}",
        )
        return load_checkpoint_file(T.run_training(cfg, mlflow=False).last_checkpoint)["state_dict"]

    a, b, c = weights(1, "a"), weights(1, "b"), weights(2, "c")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_explicit_resume_and_pretrained_weights(tmp_path, digits_small):
    data = [f"dataset.train_data_sources={digits_small['val']}", "batch_size=30"]
    first = T.run_training(cfg_of(tmp_path / "first", *data, "num_epochs=1"), mlflow=False)
    history = []
    cfg = cfg_of(
        tmp_path / "second",
        *data,
        "num_epochs=2",
        f"train.resume_training_checkpoint_path={tmp_path / 'first'}",
    )  # a results folder stands in
    T.run_training(cfg, mlflow=False, on_epoch=lambda e, m: history.append(e))
    assert history == [1]  # continued after the first run's epoch 0
    pretrained = load_checkpoint_file(first.last_checkpoint)["state_dict"]
    spy = Spy()
    cfg = cfg_of(
        tmp_path / "ft",
        *data,
        "stage=finetune",
        "num_classes=10",
        "num_epochs=1",
        f"train.pretrained_model_path={first.last_checkpoint}",
    )
    T.run_training(cfg, mlflow=False, callbacks=[spy])
    assert torch.equal(spy.before["blocks.0.attn.qkv.weight"], pretrained["model.blocks.0.attn.qkv.weight"])
    classes = json.loads((tmp_path / "ft" / "train" / "classes.json").read_text())["classes"]
    assert classes == [str(i) for i in range(10)]

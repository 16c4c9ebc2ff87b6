"""The model an action names: a trained network rebuilt from a checkpoint, or an ONNX file / TensorRT engine
(mae.deploy.runtime), for evaluate, inference and export.

The checkpoint's own metadata (stage, arch, image size, classes, decoder) wins over the spec, since it is what
the weights were trained as; where the spec says otherwise, a notice names the difference. Checkpoints from
elsewhere (official MAE `{'model': ...}` files, bare state dicts) are built from the spec.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from mae.config import ExperimentConfig
from mae.engine.checkpoints import checkpoint_meta, load_checkpoint_file, resolve_checkpoint
from mae.errors import CheckpointError
from mae.models.loaded import LoadedModel

log = logging.getLogger("mae")


def normalisation(loaded: LoadedModel, cfg: ExperimentConfig) -> tuple[list[float], list[float]]:
    """The mean/std the model was trained with (ONNX metadata or the checkpoint's spec), else the spec's."""
    meta = loaded.meta
    aug = (meta.get("spec") or {}).get("dataset", {}).get("augmentation", {})
    mean = meta.get("mean") or aug.get("mean") or cfg.dataset.augmentation.mean
    std = meta.get("std") or aug.get("std") or cfg.dataset.augmentation.std
    return list(mean), list(std)


def _infer_stage(sd: dict[str, Any]) -> str:
    if any(k.startswith(("decoder", "mask_token")) for k in sd):
        return "pretrain"
    if any(k.startswith("head") for k in sd):
        return "finetune"
    raise CheckpointError(
        "the checkpoint has neither an MAE decoder nor a classifier head; "
        "an encoder-only file can only be used as train.pretrained_model_path"
    )


def load_trained(cfg: ExperimentConfig, path: str, *, key: str, stage: str | None = None) -> LoadedModel:
    """Build and load the network a checkpoint holds. `stage`, when given, must match (a clear error if not)."""
    from mae.models import build_classifier, build_mae, load_weights, read_state_dict

    file = resolve_checkpoint(path, key=key)
    ckpt = load_checkpoint_file(file)
    meta = checkpoint_meta(ckpt)
    sd, _ = read_state_dict(ckpt)
    found = meta.get("stage") or _infer_stage(sd)
    if stage is not None and found != stage:
        want = "a classifier (finetune)" if stage == "finetune" else "an MAE (pretrain)"
        raise CheckpointError(
            f"{key}: {file} is a {found} checkpoint, but train.stage={stage} needs {want} checkpoint; "
            f"set train.stage={found} or give a {stage} checkpoint"
        )
    arch = meta.get("arch", cfg.model.arch)
    img_size = meta.get("img_size", cfg.dataset.augmentation.input_size)
    for name, ours, spec in (
        ("model.arch", arch, cfg.model.arch),
        ("dataset.augmentation.input_size", img_size, cfg.dataset.augmentation.input_size),
    ):
        if ours != spec:
            log.info(
                "%s: the checkpoint was trained with %s=%s (the spec says %s); using the checkpoint's",
                key,
                name,
                ours,
                spec,
            )
    if found == "pretrain":
        net = build_mae(
            arch,
            img_size=img_size,
            decoder_depth=meta.get("decoder_depth", cfg.model.decoder_depth),
            decoder_embed_dim=meta.get("decoder_embed_dim", cfg.model.decoder_embed_dim),
            norm_pix_loss=meta.get("norm_pix_loss", cfg.train.norm_pix_loss),
            mask_ratio=cfg.train.mask_ratio,
        )
        load_weights(net, sd, expect="pretrain")
    else:
        num_classes = meta.get("num_classes", cfg.model.num_classes)
        net = build_classifier(
            arch,
            num_classes,
            img_size=img_size,
            drop_path_rate=0.0,
            global_pool=meta.get("global_pool", cfg.model.global_pool),
        )
        load_weights(net, sd, expect="classifier")
    net.eval()
    return LoadedModel(net, found, arch, img_size, meta.get("classes"), file, meta)


def load_for_action(cfg: ExperimentConfig, section, action: str, *, stage: str | None = None) -> LoadedModel:
    """The model an evaluate/inference section names: a TensorRT engine (`trt_engine`), an ONNX file or an
    export results folder (`checkpoint` ending in .onnx, or a folder holding one), or a training checkpoint."""
    engine = section.trt_engine
    ckpt = section.checkpoint
    wants_onnx = bool(ckpt) and (str(ckpt).endswith(".onnx") or _folder_has_only_onnx(ckpt))
    if engine or wants_onnx:
        from mae.deploy import runtime

        if engine:
            return runtime.load_engine_model(cfg, engine, key=f"{action}.trt_engine", stage=stage)
        return runtime.load_onnx_model(cfg, ckpt, key=f"{action}.checkpoint", stage=stage)
    return load_trained(cfg, ckpt, key=f"{action}.checkpoint", stage=stage)


def _folder_has_only_onnx(path: str) -> bool:
    """An export results folder (ONNX files, no training checkpoint) stands for its ONNX file."""
    from mae.deploy.resolve import find_artifact
    from mae.engine.checkpoints import find_checkpoint

    p = Path(path)
    return p.is_dir() and find_checkpoint(p) is None and find_artifact(p, (".onnx",), "export") is not None

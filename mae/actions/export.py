"""mae export: a checkpoint -> one ONNX file, checked with onnx.checker and against PyTorch with onnxruntime.

A finetune checkpoint becomes its classifier (output: logits [N, num_classes]); a pretrain checkpoint becomes its
encoder as a feature extractor (output: pooled features [N, D]). See mae.deploy.onnx_export and docs/deploy.md.
`export.checkpoint` may be a results folder (its best, else latest, checkpoint is used and printed). The file
goes to `export.onnx_file`, by default `<results_dir>/export/<model_name>.onnx`; an existing file is not
replaced unless `export.overwrite` is true.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from mae import __version__
from mae.config import ExperimentConfig
from mae.errors import ConfigError
from mae.layout import STATUS_FILE

log = logging.getLogger("mae")


def _device(x) -> torch.device:
    if x.on_cpu or not torch.cuda.is_available():
        return torch.device("cpu")
    if x.gpu_id >= torch.cuda.device_count():
        raise ConfigError(
            f"export.gpu_id={x.gpu_id}: this machine has {torch.cuda.device_count()} GPU(s); "
            "choose one of them or set export.on_cpu=true"
        )
    return torch.device("cuda", x.gpu_id)


def _input_shape(cfg: ExperimentConfig, loaded) -> tuple[int, int, int]:
    """(C, H, W): the spec's input_* values, with H and W defaulting to the size the checkpoint was trained at."""
    from mae.models import get_arch

    x = cfg.export
    c, h, w = x.input_channel, x.input_height or loaded.img_size, x.input_width or loaded.img_size
    in_chans = next((m.in_channels for m in loaded.network.modules() if isinstance(m, torch.nn.Conv2d)), c)
    errors = []
    if c != in_chans:
        errors.append(
            f"export.input_channel={c}, but {loaded.arch} was built for {in_chans}-channel images; "
            f"set export.input_channel={in_chans}"
        )
    family = get_arch(loaded.arch).family if loaded.arch else ""
    if family in ("vit", "hiera") and (h, w) != (loaded.img_size, loaded.img_size):
        errors.append(
            f"export.input_height/input_width={h}x{w}, but {loaded.arch} was trained at {loaded.img_size} px and "
            f"its position embeddings fix that size; leave them null or set both to {loaded.img_size}"
        )
    if errors:
        raise ConfigError(errors)
    return c, h, w


def _metadata(cfg: ExperimentConfig, loaded) -> dict:
    aug = ((loaded.meta.get("spec") or {}).get("dataset") or {}).get("augmentation") or {}
    meta = {
        "stage": loaded.stage,
        "arch": loaded.arch,
        "img_size": loaded.img_size,
        "mean": aug.get("mean", cfg.dataset.augmentation.mean),
        "std": aug.get("std", cfg.dataset.augmentation.std),
        "source": str(loaded.path),
        "model_name": cfg.model_name,
        "mae_version": __version__,
    }
    if loaded.stage == "finetune":
        meta["classes"] = loaded.classes
        meta["global_pool"] = loaded.meta.get("global_pool", cfg.model.global_pool)
    return meta


def run(cfg: ExperimentConfig, *, overwrite: bool | None = None) -> dict:
    """Export `export.checkpoint`. `overwrite` (None: the spec's `export.overwrite`, false by default)."""
    from mae.actions.loading import load_trained
    from mae.deploy.onnx_export import data_path, export_network
    from mae.deploy.resolve import check_free, output_path
    from mae.engine.callbacks import StatusLog
    from mae.engine.checkpoints import resolve_checkpoint

    x = cfg.export
    if overwrite is None:
        overwrite = x.overwrite
    if not x.checkpoint:
        raise ConfigError(
            "export.checkpoint: required by export; set it to a checkpoint or train results folder"
        )
    out_dir = Path(cfg.action_results_dir("export"))
    onnx_file = output_path(x.onnx_file, default_dir=out_dir, name=cfg.model_name, suffix=".onnx")
    # Refuse early, before any work, when the output exists; export_network checks again before writing.
    check_free(
        [onnx_file, data_path(onnx_file)],
        key="export.onnx_file",
        overwrite=overwrite,
        overwrite_key="export.overwrite",
    )
    ckpt = resolve_checkpoint(x.checkpoint, key="export.checkpoint")
    if Path(x.checkpoint).expanduser().is_dir():
        print(f"export.checkpoint: using {ckpt} (from results folder {x.checkpoint})")
    status = StatusLog(out_dir / STATUS_FILE)
    status.write("STARTED", f"Exporting {ckpt} to ONNX.")
    try:
        loaded = load_trained(cfg, str(ckpt), key="export.checkpoint")
        result = export_network(
            loaded.network,
            onnx_file,
            input_shape=_input_shape(cfg, loaded),
            batch_size=x.batch_size,
            opset=x.opset_version,
            metadata=_metadata(cfg, loaded),
            device=_device(x),
            overwrite=overwrite,
            verbose=x.verbose,
        )
    except BaseException as e:
        status.write("FAILURE", f"Export failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}")
        raise
    summary = {
        "onnx_file": str(result.path),
        "external_data": str(result.data_path) if result.data_path else None,
        "checkpoint": str(ckpt),
        "stage": loaded.stage,
        "output": result.output,
        "output_dim": result.output_dim,
        "input_shape": list(result.input_shape),
        "batch": result.batch,
        "opset_version": result.opset,
        "max_abs_diff": result.max_abs_diff,
        "tolerance": result.tolerance,
        "parity_batches": list(result.parity_batches),
        "seconds": round(result.seconds, 3),
    }
    status.write(
        "SUCCESS",
        "Export finished successfully.",
        kpi={"max_abs_diff": result.max_abs_diff, "tolerance": result.tolerance},
    )
    what = (
        f"logits [N, {result.output_dim}]"
        if result.output == "logits"
        else f"encoder features [N, {result.output_dim}]"
    )
    print(
        f"export: {loaded.stage} checkpoint -> {what}, input {list(result.input_shape)}, batch {result.batch}, "
        f"opset {result.opset}"
    )
    print(
        f"export: onnxruntime vs PyTorch max abs diff {result.max_abs_diff:.3g} (tolerance {result.tolerance:.3g}) "
        f"at batch {list(result.parity_batches)}"
    )
    print(f"export: wrote {result.path}" + (f" and {result.data_path}" if result.data_path else ""))
    return summary

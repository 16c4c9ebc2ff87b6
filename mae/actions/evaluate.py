"""mae evaluate: loss, top-1/top-5 and a confusion matrix for a classifier; reconstruction loss for an MAE."""

from __future__ import annotations

import json
import logging

from mae.config import ExperimentConfig

log = logging.getLogger("mae")


def run(cfg: ExperimentConfig) -> dict:
    from mae.actions.common import (
        classification_metrics,
        eval_loader,
        reconstruction_loss,
        save_confusion_png,
        start_action,
    )
    from mae.engine import data as D
    from mae.errors import ConfigError
    from mae.fileio import atomic_write_text

    ctx = start_action(cfg, "evaluate")
    loaded, out, status, device, transform, bs = (
        ctx.loaded,
        ctx.out,
        ctx.status,
        ctx.device,
        ctx.transform,
        ctx.batch_size,
    )
    if loaded.stage == "finetune":
        ds, classes = D.class_dataset(
            cfg.dataset.val_data_sources,
            "dataset.val_data_sources",
            transform,
            classes=loaded.classes,
            on_error="drop",
        )
        n_out = loaded.network.num_classes
        if len(classes) != n_out:
            raise ConfigError(
                f"dataset.val_data_sources has {len(classes)} class folders but the checkpoint's "
                f"head has {n_out} classes; evaluate on the class folders it was trained on"
            )
        m = classification_metrics(loaded.network, eval_loader(ds, cfg, bs), device, n_out)
        save_confusion_png(m.pop("confusion"), classes, out / "confusion_matrix.png")
        D.save_classes(classes, out)
    else:
        ds = D.ssl_dataset(
            cfg.dataset.val_data_sources, "dataset.val_data_sources", transform, on_error="drop"
        )
        m = reconstruction_loss(
            loaded.network, eval_loader(ds, cfg, bs), device, cfg.train.mask_ratio, cfg.train.seed
        )
    m["checkpoint"] = str(loaded.path)
    atomic_write_text(out / "results.json", json.dumps(m, indent=1) + "\n")
    kpi = {k: v for k, v in m.items() if isinstance(v, float)}
    status.write("SUCCESS", "Evaluation finished successfully.", kpi=kpi)
    for k, v in kpi.items():
        print(f"evaluate: {k}={v:.4f}")
    print(f"evaluate: results in {out}")
    return m

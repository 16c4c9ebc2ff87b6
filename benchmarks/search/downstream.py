"""What the user finally gets from a selected encoder: one fixed finetune recipe, then top-1 on the test split.

Through the product: `mae train` (train.stage=finetune from the encoder's checkpoint, on the digits' train
split, validated on the val split, which picks the finetune's best epoch) and `mae evaluate` of that
classifier on the held-out test split. The recipe is the same for every encoder of every arm (RECIPE).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from benchmarks.search.harness import DEMO_SPEC

# One recipe for every encoder: 10 epochs, AdamW at a fixed peak lr with a 1-epoch warmup and cosine decay,
# the demo's batch and augmentation, the schema's finetune defaults otherwise (layer decay 0.75, drop path
# 0.1, label smoothing 0.1). The best epoch by val top-1 is evaluated on the test split.
RECIPE = [
    "train.stage=finetune",
    "train.num_epochs=10",
    "train.optim.lr=1e-3",
    "train.optim.weight_decay=0.05",
    "train.optim.lr_scheduler=cosine",
    "train.optim.warmup_epochs=1",
    "train.optim.monitor_name=ACC_all",
    "train.seed=0",
]


def finetune_top1(
    checkpoint: str | Path, data: dict[str, Path], out: Path, *, epochs: int | None = None
) -> dict:
    """Finetune `checkpoint` with RECIPE in `out`, evaluate on the test split; {"top1", "val_top1", "seconds"}.
    A finished finetune in `out` (its results.json) is read back, not redone."""
    from mae.actions import evaluate as evaluate_action
    from mae.actions import train as train_action
    from mae.spec import load_spec

    done = out / "evaluate" / "results.json"
    if done.exists():
        return _result(json.loads(done.read_text()), out, None)
    t0 = time.time()
    recipe = [*RECIPE, *([f"train.num_epochs={epochs}"] if epochs else [])]
    common = [f"results_dir={out}", f"dataset.train_data_sources={data['train']}", "model.num_classes=10"]
    cfg = load_spec(
        DEMO_SPEC,
        [
            *common,
            *recipe,
            f"dataset.val_data_sources={data['val']}",
            f"train.pretrained_model_path={checkpoint}",
        ],
        action="train",
    )
    train_action.run(cfg)
    ev = load_spec(
        DEMO_SPEC,
        [
            *common,
            *recipe,
            f"dataset.val_data_sources={data['test']}",
            f"evaluate.checkpoint={out / 'train'}",
        ],
        action="evaluate",
    )
    m = evaluate_action.run(ev)
    return _result(m, out, time.time() - t0)


def _result(m: dict[str, Any], out: Path, seconds: float | None) -> dict:
    status = out / "train" / "status.json"
    val = None
    if status.exists():
        for line in status.read_text().splitlines():
            kpi = json.loads(line).get("kpi") or {}
            if "ACC_all" in kpi:
                val = max(val or 0.0, float(kpi["ACC_all"]))
    return {"top1": float(m["ACC_all"]), "val_top1": val, "seconds": seconds}

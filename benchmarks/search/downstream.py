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
from mae.layout import TrainLayout

# One recipe for every encoder: 10 epochs (--finetune-epochs), AdamW at a fixed peak lr, no warmup, cosine decay,
# the demo's batch and augmentation, the schema's finetune defaults otherwise (layer decay 0.75, drop path
# 0.1, label smoothing 0.1). The best epoch by val top-1 is evaluated on the test split.
RECIPE = [
    "train.stage=finetune",
    "train.num_epochs=10",
    "train.optim.lr=1e-3",
    "train.optim.weight_decay=0.05",
    "train.optim.lr_scheduler=cosine",
    "train.optim.warmup_epochs=0",
    "train.optim.monitor_name=ACC_all",
    "train.seed=0",
]


def finetune_top1(
    checkpoint: str | Path | None,
    data: dict[str, Path],
    out: Path,
    *,
    epochs: int | None = None,
    seed: int | None = None,
) -> dict:
    """Finetune `checkpoint` with RECIPE in `out`, evaluate on the test split; {"top1", "val_top1", "seconds"}.
    No checkpoint: the same recipe from a random initialisation (the control: what pretraining adds); `seed`
    replaces the recipe's. A finished finetune in `out` (its results.json) is read back, not redone."""
    from mae.actions import evaluate as evaluate_action
    from mae.actions import train as train_action
    from mae.fileio import atomic_write_text
    from mae.spec import load_spec

    done = out / "evaluate" / "results.json"
    timing = out / "seconds.json"  # the finetune's own time, kept for a later read-back
    if done.exists():
        seconds = json.loads(timing.read_text())["seconds"] if timing.exists() else None
        return _result(json.loads(done.read_text()), out, seconds)
    t0 = time.time()
    recipe = [
        *RECIPE,
        *([f"train.num_epochs={epochs}"] if epochs else []),
        *([f"train.seed={seed}"] if seed is not None else []),
    ]
    common = [f"results_dir={out}", f"dataset.train_data_sources={data['train']}", "model.num_classes=10"]
    cfg = load_spec(
        DEMO_SPEC,
        [
            *common,
            *recipe,
            f"dataset.val_data_sources={data['val']}",
            *([f"train.pretrained_model_path={checkpoint}"] if checkpoint is not None else []),
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
    seconds = round(time.time() - t0, 1)
    atomic_write_text(timing, json.dumps({"seconds": seconds}) + "\n")
    return _result(m, out, seconds)


def _result(m: dict[str, Any], out: Path, seconds: float | None) -> dict:
    accs = [
        float(k["ACC_all"]) for k in TrainLayout(out / "train").epoch_metrics().values() if "ACC_all" in k
    ]
    val = max(accs, default=None)
    return {"top1": float(m["ACC_all"]), "val_top1": val, "seconds": seconds}


_IMAGES: dict[tuple, dict] = {}  # the eval-transformed splits, decoded once per process


def _split_images(data: dict[str, Path]) -> dict[str, tuple]:
    import torch

    from mae.data import build_eval_transform
    from mae.engine import data as D
    from mae.spec import load_spec

    key = tuple(sorted((k, str(v)) for k, v in data.items()))
    if key not in _IMAGES:
        cfg = load_spec(DEMO_SPEC, [f"dataset.train_data_sources={data['train']}"])
        transform = build_eval_transform(cfg.dataset.augmentation)
        out = {}
        for split in ("train", "val", "test"):
            ds, _ = D.class_dataset(str(data[split]), split, transform)
            imgs, labels = zip(*(ds[i] for i in range(len(ds))), strict=True)
            out[split] = (torch.stack(imgs), torch.tensor(labels))
        _IMAGES[key] = {"cfg": cfg, **out}
    return _IMAGES[key]


def probe_top1(checkpoint: str | Path, data: dict[str, Path], out: Path) -> dict:
    """A linear probe: logistic regression on the frozen encoder's pooled features (the product's
    `forward_features`, eval transform) of the train split, top-1 on the test split; and the same fitted on
    the labelled val split by 5-fold cross-validation inside it (`val_probe_top1`: what a search could measure
    without the test split). Seconds per encoder, so it covers every configuration; cached in `out`."""
    import torch
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from mae.actions.loading import load_trained
    from mae.fileio import atomic_write_text

    done = out / "probe.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    images = _split_images(data)
    net = load_trained(images["cfg"], str(checkpoint), key="probe", stage="pretrain").network.eval()
    feats = {}
    with torch.no_grad():
        for split in ("train", "val", "test"):
            x, y = images[split]
            f = torch.cat([net.forward_features(x[i : i + 256]).float() for i in range(0, len(x), 256)])
            feats[split] = (f.numpy(), y.numpy())

    def probe():
        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=1.0))

    test_top1 = float(probe().fit(*feats["train"]).score(*feats["test"]))
    # inside the labelled val split only (5-fold): a proxy a search could compute without the test split
    val_cv = float(cross_val_score(probe(), *feats["val"], cv=5).mean())
    res = {"probe_top1": test_top1, "val_probe_top1": val_cv, "seconds": round(time.time() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(done, json.dumps(res) + "\n")
    return res

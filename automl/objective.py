"""The search objective (metric and mode) and the guard against parameters that redefine it.

A search compares trials by one number. A parameter that changes how that number is computed makes the
comparison meaningless: a higher `train.mask_ratio` raises the reconstruction loss of an equally good model,
and stronger augmentation raises `train_loss` while it may improve the model. So under `train_loss` such
parameters are refused (or, when they came from a default list rather than from the user, left out with a
notice), unless the user explicitly allows them. Metrics measured on held-out data allow augmentation; the
pretraining `val_loss` is still the masked reconstruction loss, so `train.mask_ratio` and
`train.norm_pix_loss` still redefine it and stay guarded there.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from automl.space import SearchSpace
from mae.config import ExperimentConfig
from mae.errors import ConfigError, did_you_mean
from mae.metrics import HELD_OUT_METRICS, METRIC_MODES, STAGE_METRICS
from mae.spec import get_path

ALLOW_FLAG = "--allow-objective-change"

_MASKING = {
    "train.mask_ratio": "changes the fraction of patches the reconstruction loss is measured on",
    "train.norm_pix_loss": "changes the reconstruction target (per-patch normalised or raw pixels)",
}


def objective_change_reason(name: str, metric: str, stage: str) -> str | None:
    """Why searching `name` changes the definition of `metric` (one clause), or None when it does not."""
    if name in _MASKING and (metric == "train_loss" or (metric == "val_loss" and stage == "pretrain")):
        return f"{_MASKING[name]}, so {metric} values of different trials are not comparable"
    if name.startswith("dataset.augmentation.") and metric not in HELD_OUT_METRICS:
        return (
            f"changes the training images (or labels) that {metric} is measured on, so a lower {metric} "
            "need not mean a better model"
        )
    return None


def guard_objective(
    space: SearchSpace, metric: str, stage: str, *, allow: bool = False
) -> tuple[SearchSpace, list[str]]:
    """(space, notices). Parameters that redefine `metric` are refused with a ConfigError when the user asked
    for them (a --param or their own search-space file), left out with a notice when they came from a default
    list, and kept with a notice when `allow` is set."""
    refused: list[str] = []
    notices: list[str] = []
    drop: list[str] = []
    for p in space:
        reason = objective_change_reason(p.name, metric, stage)
        if reason is None:
            continue
        if allow:
            notices.append(f"{p.name}: searched although it {reason} (allowed by {ALLOW_FLAG})")
        elif p.explicit:
            stage_metrics = tuple(m for m in STAGE_METRICS[stage] if m in HELD_OUT_METRICS)
            fine = [m for m in stage_metrics if objective_change_reason(p.name, m, stage) is None]
            instead = (
                f"optimize {' or '.join(f'--metric {m}' for m in fine)} (with a validation set), or "
                if fine
                else ""
            )
            refused.append(
                f"{p.name}: not searched while optimizing {metric}: it {reason}; {instead}pass {ALLOW_FLAG}"
            )
        else:
            drop.append(p.name)
            notices.append(f"{p.name}: left out of the search: it {reason}")
    if refused:
        raise ConfigError(refused)
    return (space.without(drop) if drop else space), notices


def resolve_objective(
    cfg: ExperimentConfig,
    raw: Mapping[str, Any] | None = None,
    metric: str | None = None,
    mode: str | None = None,
    skill_metric: str = "train_loss",
) -> tuple[str, str]:
    """(metric, mode) of the search: `metric`, else the spec's explicit train.optim.monitor_name, else
    ACC_all when finetuning with a validation set, else the skill's monitoring metric (train_loss)."""
    if metric is None:
        if raw is not None and get_path(raw, "train.optim.monitor_name") is not None:
            metric = cfg.train.optim.monitor_name
        elif cfg.train.stage == "finetune" and cfg.dataset.val_data_sources:
            metric = "ACC_all"
        else:
            metric = skill_metric
    problems = []
    if mode is None:
        mode = METRIC_MODES.get(metric)
        if mode is None:
            problems.append(
                f"metric {metric!r} is not one this product reports{did_you_mean(metric, METRIC_MODES)}; "
                f"known: {', '.join(METRIC_MODES)} (or give --mode min|max)"
            )
    elif mode not in ("min", "max"):
        problems.append(f"mode {mode!r}: use min or max")
    if metric in HELD_OUT_METRICS and not cfg.dataset.val_data_sources:
        problems.append(
            f"metric {metric!r} is measured on validation data; set dataset.val_data_sources or use train_loss"
        )
    if metric == "ACC_all" and cfg.train.stage != "finetune":
        problems.append(
            "metric 'ACC_all' needs a classifier (train.stage=finetune); pretraining reports knn_acc"
        )
    if metric == "knn_acc" and cfg.train.stage != "pretrain":
        problems.append("metric 'knn_acc' is a pretraining metric; finetuning reports ACC_all")
    if problems:
        raise ConfigError(problems)
    return metric, mode

"""mae train: pretrain or finetune per train.stage (see mae.engine.trainer)."""

from __future__ import annotations

import logging

from mae.config import ExperimentConfig

log = logging.getLogger("mae")


def run(cfg: ExperimentConfig) -> dict:
    from mae.engine.trainer import run_training

    result = run_training(cfg)
    print(f"train: results in {result.results_dir}")
    print(f"train: best {result.monitor}={result.best_score} -> {result.best_checkpoint}")
    return {
        "results_dir": str(result.results_dir),
        "best_checkpoint": str(result.best_checkpoint),
        "metrics": result.metrics,
    }

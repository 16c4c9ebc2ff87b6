"""The five actions. Each `mae.actions.<action>` module has `run(cfg: ExperimentConfig) -> dict`."""

from __future__ import annotations

import importlib

from mae.config import ExperimentConfig
from mae.layout import ACTIONS


def run_action(action: str, cfg: ExperimentConfig) -> dict:
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    return importlib.import_module(f"mae.actions.{action}").run(cfg)

"""The five actions. Each `mae.actions.<action>` module has `run(cfg: ExperimentConfig) -> dict`.

An action whose implementation has not landed yet has no module; running it raises NotBuiltError, which the
CLI reports with a non-zero exit instead of pretending to work.
"""

from __future__ import annotations

import importlib

from mae.config import ExperimentConfig
from mae.errors import NotBuiltError

# Where each action's implementation is tracked until it lands.
_TRACKING_ISSUE = {
    "train": "issue 5 (training engine)",
    "evaluate": "issue 5 (training engine)",
    "inference": "issue 5 (training engine)",
    "export": "issue 6 (ONNX/TensorRT export)",
    "gen_trt_engine": "issue 6 (ONNX/TensorRT export)",
}


def run_action(action: str, cfg: ExperimentConfig) -> dict:
    try:
        module = importlib.import_module(f"mae.actions.{action}")
    except ModuleNotFoundError as e:
        if e.name != f"mae.actions.{action}":
            raise
        raise NotBuiltError(
            f"mae {action} is not built yet ({_TRACKING_ISSUE[action]}); the spec is valid "
            "(use --print-config to see it resolved)"
        ) from None
    return module.run(cfg)

"""A network loaded for an action, with what it was trained as (a leaf: no project imports)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class LoadedModel:
    network: torch.nn.Module  # a PyTorch module, or an ONNX/TensorRT runtime behind the same call
    stage: str  # "pretrain" | "finetune"
    arch: str
    img_size: int
    classes: list[str] | None
    path: Path
    meta: dict[str, Any]

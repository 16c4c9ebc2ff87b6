"""What a deploy artifact knows about its model, so evaluate/inference need no checkpoint beside it.

An exported `.onnx` file carries it in the model's `metadata_props`, one entry per key, named `mae.<key>`, each
value JSON-encoded. A TensorRT engine cannot carry it, so `gen_trt_engine` copies it into a sidecar file
`<engine>.json` (`{"mae": {...}, "engine": {...build settings...}}`).

Keys written by export:
  format       1 (this layout)
  stage        "finetune" | "pretrain" (the checkpoint's stage)
  output       "logits" [N, num_classes] for a finetune checkpoint | "features" [N, feature_dim] for a pretrain one
  arch, img_size, global_pool      as trained
  input_shape  [C, H, W];  batch: "dynamic" or the fixed batch size
  num_classes, classes             (classifiers; classes may be null for checkpoints without class names)
  feature_dim                      (feature extractors)
  mean, std    the input normalisation the model was trained with (images are fed normalised)
  source       the checkpoint it was exported from;  opset;  mae_version
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mae.errors import CheckpointError

PREFIX = "mae."
FORMAT = 1


def to_props(meta: dict[str, Any]) -> dict[str, str]:
    """{key: value} -> {"mae.key": JSON text}."""
    return {PREFIX + k: json.dumps(v) for k, v in meta.items()}


def from_props(props: dict[str, str]) -> dict[str, Any]:
    """The `mae.*` entries of an ONNX model's metadata_props, decoded; {} for an ONNX file from elsewhere."""
    out = {}
    for k, v in props.items():
        if k.startswith(PREFIX):
            try:
                out[k[len(PREFIX) :]] = json.loads(v)
            except json.JSONDecodeError:
                out[k[len(PREFIX) :]] = v
    return out


def read_onnx_metadata(path: str | os.PathLike, *, key: str = "onnx_file") -> dict[str, Any]:
    """Our metadata of an .onnx file (without reading its weights); a CheckpointError if it is not ONNX."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError, ValueError) as e:
        raise CheckpointError(
            f"{key}={str(path)!r} is not a readable ONNX file ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''})"
        ) from None
    return from_props({p.key: p.value for p in model.metadata_props})


def sidecar_path(engine: str | os.PathLike) -> Path:
    """Where an engine's metadata lives: `<engine>.json` beside it."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_engine_metadata(engine: str | os.PathLike) -> dict[str, Any]:
    """The sidecar of an engine: {"mae": ..., "engine": ...}, or {} when there is none."""
    side = sidecar_path(engine)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(
            f"{side} (the metadata of engine {engine}) cannot be read: {e}; "
            "delete it or rebuild the engine with mae gen_trt_engine"
        ) from None
    return data if isinstance(data, dict) else {}

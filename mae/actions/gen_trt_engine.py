"""mae gen_trt_engine: an ONNX file -> a TensorRT engine (needs the 'deploy' extra and an NVIDIA GPU).

`gen_trt_engine.onnx_file` may be an export results folder (its ONNX file is used and printed); unset, the
export folder of this results_dir is used. The engine goes to `gen_trt_engine.trt_engine`, by default
`<results_dir>/gen_trt_engine/<model_name>.engine`, with the model's metadata (classes, stage, input size) and
the build settings in `<engine>.json` beside it. An existing engine is not replaced unless
`gen_trt_engine.overwrite` is true. Without TensorRT or a GPU the action stops at once with one line saying
what is missing and how to install it.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from pathlib import Path

from mae.config import ExperimentConfig
from mae.errors import ConfigError
from mae.layout import STATUS_FILE

log = logging.getLogger("mae")


def run(cfg: ExperimentConfig, *, overwrite: bool | None = None) -> dict:
    """Build the engine. `overwrite` (None: the spec's `gen_trt_engine.overwrite`, false by default)."""
    from mae.deploy.metadata import read_onnx_metadata, sidecar_path
    from mae.deploy.resolve import check_free, output_path, resolve_onnx
    from mae.deploy.tensorrt_build import EngineSettings, build_engine, require_tensorrt
    from mae.engine.callbacks import StatusLog
    from mae.fileio import atomic_write_bytes

    g = cfg.gen_trt_engine
    if overwrite is None:
        overwrite = g.overwrite
    trt = require_tensorrt(g.gpu_id)  # first: without TensorRT or a GPU nothing else matters
    out_dir = Path(cfg.action_results_dir("gen_trt_engine"))
    source = g.onnx_file
    if not source:
        source = cfg.action_results_dir("export")
        if not Path(source).is_dir():
            raise ConfigError(
                "gen_trt_engine.onnx_file: required by gen_trt_engine; set it to an .onnx file or "
                f"export results folder (the default, {source}, does not exist)"
            )
    onnx_file = resolve_onnx(source, key="gen_trt_engine.onnx_file", model_name=cfg.model_name)
    engine_file = output_path(g.trt_engine, default_dir=out_dir, name=cfg.model_name, suffix=".engine")
    side = sidecar_path(engine_file)
    check_free(
        [engine_file, side],
        key="gen_trt_engine.trt_engine",
        overwrite=overwrite,
        overwrite_key="gen_trt_engine.overwrite",
    )
    meta = read_onnx_metadata(onnx_file, key="gen_trt_engine.onnx_file")
    settings = EngineSettings.from_config(g)
    status = StatusLog(out_dir / STATUS_FILE)
    status.write("STARTED", f"Building a TensorRT engine from {onnx_file}.")
    try:
        result = build_engine(trt, onnx_file, settings)
        for note in result.notes:
            print(f"gen_trt_engine: {note}")
        build = {
            "onnx_file": str(onnx_file),
            "data_type": ",".join(result.precisions),
            "input": result.profile.input_name,
            "profile": {
                "min": list(result.profile.min),
                "opt": list(result.profile.opt),
                "max": list(result.profile.max),
            },
            "workspace_mb": settings.workspace_mb,
            "layers_precision": settings.layers_precision,
            "timing_cache": str(settings.timing_cache) if settings.timing_cache else None,
            "tensorrt_version": result.tensorrt_version,
            "built": dt.datetime.now().isoformat(timespec="seconds"),
        }
        check_free(
            [engine_file, side],
            key="gen_trt_engine.trt_engine",
            overwrite=overwrite,
            overwrite_key="gen_trt_engine.overwrite",
        )
        atomic_write_bytes(side, (json.dumps({"mae": meta, "engine": build}, indent=1) + "\n").encode())
        atomic_write_bytes(engine_file, result.engine)
    except BaseException as e:
        status.write(
            "FAILURE", f"Engine build failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        )
        raise
    status.write("SUCCESS", "Engine generated successfully.", kpi={"engine_bytes": len(result.engine)})
    p = result.profile
    print(
        f"gen_trt_engine: {build['data_type']} engine, batch profile min/opt/max = {p.min[0]}/{p.opt[0]}/{p.max[0]}, "
        f"input {list(p.opt[1:])}, TensorRT {result.tensorrt_version}"
    )
    print(f"gen_trt_engine: wrote {engine_file} ({len(result.engine)} bytes) and {side}")
    return {"trt_engine": str(engine_file), "metadata_file": str(side), **build}

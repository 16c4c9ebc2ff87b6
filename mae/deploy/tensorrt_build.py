"""An ONNX file -> a serialized TensorRT engine, with TensorRT's Python API (TensorRT 10; 8.6 works too).

    trt = require_tensorrt(gpu_id)                       # MissingDependencyError naming what is missing
    settings = EngineSettings.from_config(cfg.gen_trt_engine)
    result = build_engine(trt, "model.onnx", settings)   # BuildResult: engine bytes, profile, notes

Steps: the ONNX parser (every error reported with its node), one optimization profile for the input
(`plan_profile`), precision flags (fp32; fp16 allows FP16 kernels, TensorRT keeps FP32 where FP16 is slower or
unsupported; int8 only with a calibrator), per-layer precision constraints, the workspace limit, and the timing
cache: read from `timing_cache` when the file exists, written back (atomically) after the build.

`trt` is passed in rather than imported here, so the profile and configuration logic is testable without
TensorRT (the tests pass an object that records the calls).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mae.deploy.errors import EngineBuildError
from mae.errors import ConfigError, MissingDependencyError, did_you_mean
from mae.fileio import atomic_write_bytes

log = logging.getLogger("mae")

INSTALL_HINT = "pip install 'mae-automl[deploy]' (or pip install tensorrt) on a machine with an NVIDIA driver"


def require_tensorrt(gpu_id: int = 0, *, what: str = "gen_trt_engine"):
    """The `tensorrt` module, with CUDA device `gpu_id` made current; else one MissingDependencyError line
    naming everything that is missing (the package, a GPU) and how to get it."""
    import torch

    missing = []
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the package is there but libnvinfer cannot load
        trt = None
        why = "is not installed" if isinstance(e, ImportError) else f"cannot load ({str(e).splitlines()[0]})"
        missing.append(f"TensorRT, whose Python package {why} (install it with {INSTALL_HINT})")
    if not torch.cuda.is_available():
        missing.append(
            "an NVIDIA GPU with CUDA, which this machine does not have (torch.cuda.is_available() "
            "is False; run on a GPU machine)"
        )
    elif gpu_id >= torch.cuda.device_count():
        missing.append(
            f"GPU {gpu_id}, but this machine has {torch.cuda.device_count()} GPU(s); set gpu_id "
            "to one of them"
        )
    if missing:
        raise MissingDependencyError(f"{what} needs " + ", and ".join(missing))
    torch.cuda.set_device(gpu_id)
    return trt


@dataclass
class EngineSettings:
    precisions: tuple[str, ...] = ("fp32",)  # subset of fp32, fp16, int8
    workspace_mb: int = 1024
    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 1
    batch_size: int = -1  # > 0: a fixed batch (overrides min/opt/max)
    layers_precision: dict[str, str] = field(default_factory=dict)  # layer name -> fp32 | fp16
    timing_cache: Path | None = None
    verbose: bool = False

    @classmethod
    def from_config(cls, g) -> EngineSettings:
        """From a GenTrtEngineConfig (validated: known data types, min <= opt <= max)."""
        t = g.tensorrt
        layers = {}
        for entry in t.layers_precision:
            name, _, prec = entry.rpartition(":")
            layers[name] = prec.lower()
        return cls(
            precisions=tuple(dict.fromkeys(p.strip().lower() for p in t.data_type.split(","))),
            workspace_mb=t.workspace_size,
            min_batch=t.min_batch_size,
            opt_batch=t.opt_batch_size,
            max_batch=t.max_batch_size,
            batch_size=g.batch_size,
            layers_precision=layers,
            timing_cache=Path(g.timing_cache).expanduser() if g.timing_cache else None,
            verbose=g.verbose,
        )


@dataclass
class Profile:
    input_name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]
    notes: list[str] = field(default_factory=list)


def plan_profile(
    input_name: str, shape: tuple[int, ...], s: EngineSettings, source: str = "the ONNX file"
) -> Profile:
    """The optimization profile for an input of `shape` (-1 marks a dynamic dimension, TensorRT's convention).

    Dynamic batch: gen_trt_engine.batch_size > 0 fixes it, else tensorrt.min/opt/max_batch_size. A fixed ONNX
    batch B is kept (batch_size must be -1 or B; min/opt/max are then ignored, with a note)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2 or any(d < 0 for d in shape[1:]):
        raise ConfigError(
            f"gen_trt_engine.onnx_file: {source} input {input_name!r} has shape {list(shape)}; only "
            "the batch dimension may be dynamic: export with fixed input_channel/height/width"
        )
    rest = shape[1:]
    notes = []
    b = shape[0]
    if b > 0:
        if s.batch_size not in (-1, b):
            raise ConfigError(
                f"gen_trt_engine.batch_size={s.batch_size}, but {source} has a fixed batch of {b}; set "
                f"gen_trt_engine.batch_size=-1 (or {b}), or re-export with export.batch_size=-1 for a dynamic batch"
            )
        if (s.min_batch, s.opt_batch, s.max_batch) not in ((1, 1, 1), (b, b, b)):
            notes.append(
                f"{source} has a fixed batch of {b}: tensorrt.min/opt/max_batch_size "
                f"({s.min_batch}/{s.opt_batch}/{s.max_batch}) are ignored"
            )
        lo = opt = hi = b
    elif s.batch_size > 0:
        lo = opt = hi = s.batch_size
        notes.append(
            f"gen_trt_engine.batch_size={s.batch_size}: the engine takes exactly that batch "
            "(tensorrt.min/opt/max_batch_size are ignored)"
        )
    else:
        lo, opt, hi = s.min_batch, s.opt_batch, s.max_batch
    return Profile(input_name, (lo, *rest), (opt, *rest), (hi, *rest), notes)


@dataclass
class BuildResult:
    engine: bytes
    profile: Profile
    precisions: tuple[str, ...]
    notes: list[str]
    tensorrt_version: str
    timing_cache_written: Path | None


def _network_flags(trt) -> int:
    major = int(str(getattr(trt, "__version__", "10")).split(".")[0])
    if major >= 10:
        return 0  # explicit batch is the only mode (the flag is deprecated)
    return 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)


def parser_errors(parser, source: str) -> list[str]:
    """One line per ONNX parser error, naming the node (index, name, operator) where TensorRT says it."""
    lines = []
    for i in range(parser.num_errors):
        e = parser.get_error(i)
        node = e.node()
        name = e.node_name() if hasattr(e, "node_name") else ""
        op = e.node_operator() if hasattr(e, "node_operator") else ""
        where = (
            "model"
            if node < 0
            else f"node {node}" + (f" {name!r}" if name else "") + (f" ({op})" if op else "")
        )
        lines.append(f"TensorRT cannot parse {source}: {where}: {e.desc()} [{e.code()}]")
    return lines or [f"TensorRT cannot parse {source} (the parser gave no details)"]


def apply_layer_precisions(trt, network, config, layers: dict[str, str]) -> None:
    """Pin the named layers (and their outputs) to fp32/fp16; TensorRT is told to obey the constraints."""
    if not layers:
        return
    by_name = {}
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        by_name[layer.name] = layer
    unknown = [n for n in layers if n not in by_name]
    if unknown:
        raise ConfigError(
            [
                f"gen_trt_engine.tensorrt.layers_precision: the network has no layer named {n!r}"
                f"{did_you_mean(n, by_name)}"
                for n in unknown
            ]
        )
    for name, prec in layers.items():
        dtype = trt.float16 if prec == "fp16" else trt.float32
        layer = by_name[name]
        layer.precision = dtype
        for j in range(layer.num_outputs):
            layer.set_output_type(j, dtype)
    config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)


def build_engine(trt, onnx_path: str | Path, s: EngineSettings, *, calibrator: Any = None) -> BuildResult:
    """Parse, configure and build; the serialized engine comes back (the caller writes it)."""
    onnx_path = Path(onnx_path)
    source = onnx_path.name
    if "int8" in s.precisions and calibrator is None:
        raise ConfigError(
            "gen_trt_engine.tensorrt.data_type: int8 needs a calibrator with calibration images, "
            "which this product does not provide; use fp16 (or fp32,fp16)"
        )
    logger = trt.Logger(trt.Logger.VERBOSE if s.verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file, so external weights are found
        raise EngineBuildError(parser_errors(parser, source))
    if network.num_inputs != 1:
        raise EngineBuildError(
            f"{source} has {network.num_inputs} inputs; gen_trt_engine builds image models with one input"
        )
    inp = network.get_input(0)
    profile = plan_profile(inp.name, tuple(inp.shape), s, source)
    notes = list(profile.notes)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, s.workspace_mb * 2**20)
    if "fp16" in s.precisions:
        if not getattr(builder, "platform_has_fast_fp16", True):
            notes.append("this GPU has no fast FP16: the fp16 engine may be no faster than fp32")
        config.set_flag(trt.BuilderFlag.FP16)
    if "int8" in s.precisions:
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    apply_layer_precisions(trt, network, config, s.layers_precision)
    opt_profile = builder.create_optimization_profile()
    opt_profile.set_shape(profile.input_name, profile.min, profile.opt, profile.max)
    config.add_optimization_profile(opt_profile)

    cache_bytes = b""
    if s.timing_cache is not None and s.timing_cache.is_file():
        cache_bytes = s.timing_cache.read_bytes()
        notes.append(f"timing cache read from {s.timing_cache} ({len(cache_bytes)} bytes)")
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(
        cache, False
    )  # ignore_mismatch=False: a cache from another GPU is not used blindly

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT could not build an engine from {source} (its messages above say why; "
            "rerun with gen_trt_engine.verbose=true for details)"
        )
    written = None
    if s.timing_cache is not None:
        written = atomic_write_bytes(s.timing_cache, bytes(config.get_timing_cache().serialize()))
    return BuildResult(
        engine=bytes(serialized),
        profile=profile,
        precisions=s.precisions,
        notes=notes,
        tensorrt_version=str(getattr(trt, "__version__", "?")),
        timing_cache_written=written,
    )

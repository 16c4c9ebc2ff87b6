"""Deploy metrics of a model shape, measured rather than guessed, and a cache so each shape is measured once.

    spec = ModelSpec("vit_tiny_patch4", input_size=32, num_classes=10, stage="finetune")
    entry = profile_model(spec, ProfileSettings(batch=1, threads=1))
    entry["latency_ms"], entry["throughput_ips"], entry["params_m"], entry["gflops"], entry["onnx_mb"]

What each metric is:
  latency_ms      median wall time of one run at `batch` (default 1) over `runs` (>= 30) timed runs after
                  `warmup` untimed ones. onnxruntime on the CPU with a fixed intra-op thread count (`threads`,
                  default 1; inter-op 1, sequential); or, with runtime "tensorrt", the TensorRT engine on the GPU
                  (input already on the device, time to a synchronised result). The entry says which.
  throughput_ips  images per second at `throughput_batch` (default 32): batch / median time of a run.
  params_m        millions of parameters the exported forward uses (trainable or frozen, e.g. the MAE's fixed
                  position embedding); for a pretrain model, the encoder only (what `mae export` writes).
  gflops          billions of floating-point operations of one image (batch 1), counted by
                  torch.utils.flop_counter.FlopCounterMode on one forward: matrix multiplies, convolutions and
                  attention, a multiply-add counting as 2 flops (`flops_per_mac` 2); element-wise ops (norms,
                  activations, softmax) are not counted. PyTorch's CPU attention kernel has no formula of its own
                  there, so it is given the same one as the GPU kernels (two batched matrix products).
  onnx_mb         size of the exported ONNX file (with its external weights, if any), in 10^6 bytes.

The model is built from the spec with seeded random weights (these metrics depend on the architecture and the
input shape, not on the weights) and exported with the product's own `mae.deploy.onnx_export.export_network`
(dynamic batch, opset 17, onnx.checker and the onnxruntime parity check), in a temporary folder.

The cache (`ProfileCache`) is a JSON file keyed by arch, input size, classes, stage, batch, threads, runtime and
throughput batch, written atomically under a file lock (filelock). The lock is held while measuring, so two
trials asking for the same shape measure it once, and two measurements never share the CPU.

How the runner uses it: one cache per experiment (e.g. `<results_dir>/automl/deploy_profile.json`); before
the trials start (so that training does not disturb the timings) `ProfileCache.get_or_measure` for every
distinct shape the search space can produce, then each trial's deploy metrics come from the cache
(`deploy_metrics(entry)`), are checked against the constraints before the trial trains, and are added to every
epoch's report. The TensorRT branch imports TensorRT lazily (mae.deploy.tensorrt_build.require_tensorrt).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mae.errors import ConfigError, MAEError
from mae.metrics import DEPLOY_METRIC_MODES

log = logging.getLogger("mae")

ONNXRUNTIME_CPU = "onnxruntime-cpu"
TENSORRT = "tensorrt"
RUNTIMES = (ONNXRUNTIME_CPU, TENSORRT)
STAGES = ("finetune", "pretrain")
FLOPS_PER_MAC = 2  # torch.utils.flop_counter counts a multiply-add as two flops
FLOPS_COUNTED = "matmul, convolution and attention multiply-adds (x2); element-wise ops not counted"
MIN_RUNS = 30
CACHE_VERSION = 1


@dataclass(frozen=True)
class ModelSpec:
    """The shape of a model, as the product builds it (mae.engine.trainer.build_network)."""

    arch: str
    input_size: int
    num_classes: int = 1000
    stage: str = "finetune"  # "finetune": the classifier; "pretrain": the MAE encoder as a feature extractor
    in_chans: int = 3
    global_pool: bool = True  # finetune only

    @classmethod
    def from_config(cls, cfg) -> ModelSpec:
        """From an ExperimentConfig: model.arch, model.num_classes, model.global_pool, train.stage,
        dataset.augmentation.input_size."""
        return cls(
            arch=cfg.model.arch,
            input_size=cfg.dataset.augmentation.input_size,
            num_classes=cfg.model.num_classes,
            stage=cfg.train.stage,
            global_pool=cfg.model.global_pool,
        )

    def check(self) -> None:
        from mae.errors import unknown_choice
        from mae.models import get_arch

        get_arch(self.arch)  # a ConfigError with close matches for an unknown name
        problems = []
        if self.stage not in STAGES:
            problems.append(unknown_choice("train.stage", self.stage, STAGES).problems[0])
        if self.input_size < 1:
            problems.append(f"dataset.augmentation.input_size={self.input_size}: must be >= 1")
        if self.stage == "finetune" and self.num_classes < 1:
            problems.append(f"model.num_classes={self.num_classes}: must be >= 1")
        if problems:
            raise ConfigError(problems)

    def key_fields(self) -> dict[str, Any]:
        """What the metrics depend on: a pretrain export has no head, so its classes and pooling do not count."""
        finetune = self.stage == "finetune"
        return {
            "arch": self.arch,
            "input_size": self.input_size,
            "num_classes": self.num_classes if finetune else None,
            "stage": self.stage,
            "in_chans": self.in_chans,
            "global_pool": self.global_pool if finetune else None,
        }


@dataclass(frozen=True)
class ProfileSettings:
    batch: int = 1  # latency batch (automl --latency-batch)
    threads: int = 1  # onnxruntime intra-op threads, fixed so latencies compare
    runtime: str = "auto"  # "auto": tensorrt where TensorRT and a GPU are present, else onnxruntime-cpu
    runs: int = MIN_RUNS
    warmup: int = 10
    throughput_batch: int = 32
    throughput_runs: int = 10
    gpu_id: int = 0  # tensorrt
    trt_precision: str = "fp32"  # tensorrt: "fp32" or "fp16"

    def check(self) -> None:
        problems = []
        for name, low in (("batch", 1), ("threads", 1), ("warmup", 1), ("throughput_batch", 1)):
            if getattr(self, name) < low:
                problems.append(f"deploy profile {name}={getattr(self, name)}: must be >= {low}")
        if self.runs < MIN_RUNS:
            problems.append(
                f"deploy profile runs={self.runs}: latency is a median of at least {MIN_RUNS} runs"
            )
        if self.throughput_runs < 1:
            problems.append(f"deploy profile throughput_runs={self.throughput_runs}: must be >= 1")
        if self.runtime not in ("auto", *RUNTIMES):
            problems.append(f"deploy profile runtime={self.runtime!r}: one of auto, {', '.join(RUNTIMES)}")
        if self.trt_precision not in ("fp32", "fp16"):
            problems.append(f"deploy profile trt_precision={self.trt_precision!r}: fp32 or fp16")
        if problems:
            raise ConfigError(problems)

    def resolved(self) -> ProfileSettings:
        """With runtime "auto" replaced by the runtime this machine offers."""
        if self.runtime != "auto":
            return self
        return ProfileSettings(
            **{**asdict(self), "runtime": TENSORRT if tensorrt_available() else ONNXRUNTIME_CPU}
        )


def tensorrt_available() -> bool:
    """TensorRT's Python package is installed and a CUDA GPU is visible (without importing TensorRT)."""
    return importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available()


def cache_key(spec: ModelSpec, settings: ProfileSettings) -> str:
    """'arch=vit_tiny_patch4,input_size=32,...': the fields the metrics depend on, settings resolved."""
    s = settings.resolved()
    fields = {
        **spec.key_fields(),
        "batch": s.batch,
        "threads": s.threads,
        "runtime": s.runtime,
        "throughput_batch": s.throughput_batch,
    }
    if s.runtime == TENSORRT:
        fields["precision"] = s.trt_precision
    return ",".join(f"{k}={v}" for k, v in fields.items())


# --- the measurements ----------------------------------------------------------------------------------------


def build_exportable(spec: ModelSpec, seed: int = 0) -> nn.Module:
    """The network `mae export` would write for this shape: the classifier, or the MAE's encoder features."""
    from mae.deploy.onnx_export import exportable
    from mae.models import build_classifier, build_mae

    torch.manual_seed(seed)
    if spec.stage == "finetune":
        model = build_classifier(
            spec.arch,
            spec.num_classes,
            img_size=spec.input_size,
            drop_path_rate=0.0,
            global_pool=spec.global_pool,
            in_chans=spec.in_chans,
        )
    else:
        # Only the encoder is exported, unmasked: the decoder and the mask ratio change nothing measured, so
        # the smallest decoder (fastest to build) and no masking (valid at any input size) are used.
        model = build_mae(
            spec.arch,
            img_size=spec.input_size,
            in_chans=spec.in_chans,
            mask_ratio=0.0,
            decoder_depth=1,
            decoder_embed_dim=64,
        )
    net, _ = exportable(model)
    return net.eval()


def used_parameters(net: nn.Module, example: torch.Tensor) -> int:
    """Parameters the forward uses: those that get a gradient (frozen ones included for the count)."""
    params = list(net.parameters())
    frozen = [p.requires_grad for p in params]
    try:
        for p in params:
            p.requires_grad_(True)
        out = net(example)
        grads = torch.autograd.grad(out.float().sum(), params, allow_unused=True)
    finally:
        for p, rg in zip(params, frozen, strict=True):
            p.requires_grad_(rg)
    return sum(p.numel() for p, g in zip(params, grads, strict=True) if g is not None)


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # softmax(q k^T) v: two batched products, [.., Sq, D] x [.., D, Sk] and [.., Sq, Sk] x [.., Sk, Dv]
    *lead, sq, d = query_shape
    sk, dv = key_shape[-2], value_shape[-1]
    n = math.prod(lead)
    return FLOPS_PER_MAC * n * sq * sk * (d + dv)


def count_flops(net: nn.Module, example: torch.Tensor) -> int:
    """Flops of one forward, FlopCounterMode with the CPU attention kernel given its formula."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    cpu_attention = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_attention is not None:
        mapping[cpu_attention] = _attention_flops
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        net(example)
    return int(counter.get_total_flops())


def _timed(fn: Callable[[], Any], runs: int, warmup: int) -> np.ndarray:
    """Milliseconds of each of `runs` calls of fn, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        times[i] = (time.perf_counter_ns() - t0) / 1e6
    return times


def _onnxruntime_runner(onnx_path: Path, threads: int) -> Callable[[np.ndarray], Callable[[], Any]]:
    import onnxruntime as ort

    from mae.deploy.onnx_export import INPUT_NAME, OUTPUT_NAME

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])

    def runner(x: np.ndarray) -> Callable[[], Any]:
        return lambda: session.run([OUTPUT_NAME], {INPUT_NAME: x})

    return runner


def _tensorrt_runner(onnx_path: Path, work: Path, s: ProfileSettings) -> tuple[Callable, dict[str, Any]]:
    from mae.deploy.runtime import TrtNetwork
    from mae.deploy.tensorrt_build import EngineSettings, build_engine, require_tensorrt
    from mae.fileio import atomic_write_bytes

    trt = require_tensorrt(s.gpu_id, what="deploy profiling with runtime tensorrt")
    built = build_engine(
        trt,
        onnx_path,
        EngineSettings(
            precisions=(s.trt_precision,),
            min_batch=1,
            opt_batch=s.batch,
            max_batch=max(s.batch, s.throughput_batch),
        ),
    )
    engine = atomic_write_bytes(work / "model.engine", built.engine)
    device = torch.device("cuda", s.gpu_id)
    net = TrtNetwork(trt, engine, device)

    def runner(x: np.ndarray) -> Callable[[], Any]:
        xd = torch.from_numpy(x).to(device)
        return lambda: net(xd)  # TrtNetwork synchronises its stream before returning

    info = {"tensorrt_version": built.tensorrt_version, "device": torch.cuda.get_device_name(device)}
    return runner, info


def profile_model(spec: ModelSpec, settings: ProfileSettings | None = None) -> dict[str, Any]:
    """Measure the deploy metrics of `spec` (see the module docstring); a JSON-ready dict."""
    from mae.deploy.onnx_export import export_network

    settings = (settings or ProfileSettings()).resolved()
    spec.check()
    settings.check()
    if settings.runtime == TENSORRT:  # fail before the export when TensorRT or the GPU is missing
        from mae.deploy.tensorrt_build import require_tensorrt

        require_tensorrt(settings.gpu_id, what="deploy profiling with runtime tensorrt")
    t0 = time.perf_counter()
    c, size = spec.in_chans, spec.input_size
    net = build_exportable(spec)
    example = torch.randn(1, c, size, size, generator=torch.Generator().manual_seed(0))
    params = used_parameters(net, example)
    flops = count_flops(net, example)
    work = Path(tempfile.mkdtemp(prefix="mae-profile-"))
    try:
        exported = export_network(
            net,
            work / "model.onnx",
            input_shape=(c, size, size),
            batch_size=-1,
            metadata={"arch": spec.arch, "stage": spec.stage, "img_size": size},
        )
        onnx_bytes = exported.path.stat().st_size + (
            exported.data_path.stat().st_size if exported.data_path else 0
        )
        if settings.runtime == TENSORRT:
            runner, info = _tensorrt_runner(exported.path, work, settings)
        else:
            runner = _onnxruntime_runner(exported.path, settings.threads)
            info = {"device": _cpu_name()}
        rng = np.random.default_rng(0)
        x = rng.standard_normal((settings.batch, c, size, size), dtype=np.float32)
        lat = _timed(runner(x), settings.runs, settings.warmup)
        xb = rng.standard_normal((settings.throughput_batch, c, size, size), dtype=np.float32)
        big = _timed(runner(xb), settings.throughput_runs, max(1, settings.warmup // 5))
        opset = exported.opset
    finally:
        shutil.rmtree(work, ignore_errors=True)
    import onnxruntime

    return {
        **{k: v for k, v in spec.key_fields().items() if v is not None},
        "batch": settings.batch,
        "threads": settings.threads,
        "runtime": settings.runtime,
        **({"precision": settings.trt_precision} if settings.runtime == TENSORRT else {}),
        "latency_ms": float(np.median(lat)),
        "latency_ms_min": float(lat.min()),
        "latency_ms_p90": float(np.percentile(lat, 90)),
        "latency_runs": settings.runs,
        "warmup_runs": settings.warmup,
        "throughput_ips": float(settings.throughput_batch / (np.median(big) / 1e3)),
        "throughput_batch": settings.throughput_batch,
        "throughput_runs": settings.throughput_runs,
        "params": params,
        "params_m": params / 1e6,
        "flops": flops,
        "gflops": flops / 1e9,
        "flops_per_mac": FLOPS_PER_MAC,
        "flops_counted": FLOPS_COUNTED,
        "onnx_bytes": onnx_bytes,
        "onnx_mb": onnx_bytes / 1e6,
        "opset": opset,
        **info,
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t0, 3),
    }


def deploy_metrics(entry: Mapping[str, Any]) -> dict[str, float]:
    """The five deploy metrics of a profile entry, as a trial reports them."""
    return {k: float(entry[k]) for k in DEPLOY_METRIC_MODES}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# --- the cache -----------------------------------------------------------------------------------------------


class ProfileCache:
    """Deploy profiles in one JSON file, {"version": 1, "entries": {cache_key: entry}}, guarded by
    `<file>.lock`. Entries are only added; delete the file to measure again."""

    def __init__(self, path: str | os.PathLike, *, lock_timeout: float = 1800):
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.lock_timeout = lock_timeout

    def _lock(self):
        from filelock import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.lock_path), timeout=self.lock_timeout)

    def entries(self) -> dict[str, dict[str, Any]]:
        """Every cached entry (no lock: the file is replaced atomically, so a read sees a whole version)."""
        if not self.path.is_file():
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            log.warning("deploy profile cache %s is unreadable (%s); measuring again", self.path, e)
            return {}
        if not isinstance(data, dict) or data.get("version") != CACHE_VERSION:
            log.warning("deploy profile cache %s has another format; measuring again", self.path)
            return {}
        return dict(data.get("entries") or {})

    def get(self, spec: ModelSpec, settings: ProfileSettings | None = None) -> dict[str, Any] | None:
        return self.entries().get(cache_key(spec, settings or ProfileSettings()))

    def get_or_measure(
        self, spec: ModelSpec, settings: ProfileSettings | None = None
    ) -> tuple[dict[str, Any], bool]:
        """(entry, True) from the cache, else (entry, False) measured now and stored."""
        from filelock import Timeout

        from mae.fileio import atomic_write_json

        settings = (settings or ProfileSettings()).resolved()
        key = cache_key(spec, settings)
        hit = self.entries().get(key)
        if hit is not None:
            return hit, True
        try:
            with self._lock():
                entries = self.entries()  # another process may have measured it while we waited
                if key in entries:
                    return entries[key], True
                entry = profile_model(spec, settings)
                entries[key] = entry
                atomic_write_json(self.path, {"version": CACHE_VERSION, "entries": entries})
        except Timeout:
            raise MAEError(
                f"deploy profile cache {self.path} stayed locked for {self.lock_timeout:g} s; if no search "
                f"is running, delete {self.lock_path}"
            ) from None
        log.info(
            "deploy profile %s: latency %.3g ms (%s), %.3g M params, %.3g GFLOPs",
            key,
            entry["latency_ms"],
            entry["runtime"],
            entry["params_m"],
            entry["gflops"],
        )
        return entry, False

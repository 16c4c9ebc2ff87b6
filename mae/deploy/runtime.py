"""ONNX files (onnxruntime) and TensorRT engines behind the interface evaluate and inference use.

`load_onnx_model` / `load_engine_model` return a `mae.models.loaded.LoadedModel` whose `network` is an
`nn.Module`: `network(imgs [N, C, H, W] normalised float) -> logits [N, num_classes]` on the device of `imgs`,
with `.to()`, `.eval()` and `num_classes` like the PyTorch classifier. Batches larger than the artifact accepts
(a fixed ONNX batch, an engine's max_batch_size) are split, and a short last batch is zero-padded and trimmed,
so any batch size works.

Only classifier exports run here. A pretrain export is the encoder as a feature extractor; evaluate (reconstruction
loss) and inference (reconstruction images) need the MAE decoder and masking, so such a file is a clear error.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mae.config import ExperimentConfig
from mae.deploy.metadata import read_engine_metadata, read_onnx_metadata
from mae.deploy.onnx_export import INPUT_NAME, OUTPUT_NAME
from mae.deploy.resolve import resolve_engine, resolve_onnx
from mae.errors import CheckpointError
from mae.models.loaded import LoadedModel

log = logging.getLogger("mae")


def _chunks(x: torch.Tensor, size: int | None, min_size: int = 1):
    """(chunk, n real rows) with every chunk of `size` rows (or fewer, at least `min_size`) when size is set."""
    if size is None:
        yield x, x.shape[0]
        return
    for start in range(0, x.shape[0], size):
        part = x[start : start + size]
        n = part.shape[0]
        want = size if min_size == size else max(n, min_size)
        if n < want:
            part = torch.cat([part, part.new_zeros(want - n, *part.shape[1:])])
        yield part, n


class OnnxNetwork(nn.Module):
    """An ONNX model run by onnxruntime. Inputs are copied to host memory; outputs come back on their device."""

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None):
        super().__init__()
        import onnxruntime as ort

        self.path = Path(path)
        available = ort.get_available_providers()
        if providers is None:
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(self.path), providers=providers)
        except _ort_errors() as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{self.path} cannot be loaded by onnxruntime: {first[:300]}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) < 1:
            raise CheckpointError(
                f"{self.path}: expected one image input and an output, found inputs "
                f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}"
            )
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        shape = inputs[0].shape
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in shape)  # -1 = dynamic
        self.fixed_batch = self.input_shape[0] if self.input_shape[0] > 0 else None
        last = outputs[0].shape[-1]
        self.out_dim = last if isinstance(last, int) else None
        self.num_classes = self.out_dim

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = imgs.detach().to("cpu", torch.float32).contiguous()
        outs = []
        for part, n in _chunks(x, self.fixed_batch, self.fixed_batch or 1):
            (out,) = self.session.run([self.output_name], {self.input_name: part.numpy()})
            outs.append(torch.from_numpy(np.ascontiguousarray(out[:n])))
        return torch.cat(outs).to(imgs.device)


def _ort_errors() -> tuple[type[BaseException], ...]:
    """onnxruntime's load errors (pybind classes with no common base below Exception)."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = (
        "Fail",
        "InvalidArgument",
        "NoSuchFile",
        "NoModel",
        "InvalidProtobuf",
        "InvalidGraph",
        "NotImplemented",
        "RuntimeException",
        "EPFail",
        "ModelLoaded",
        "EngineError",
    )
    return tuple(getattr(state, n) for n in names if isinstance(getattr(state, n, None), type))


class TrtNetwork(nn.Module):
    """A serialized TensorRT engine (TensorRT 10 tensor API) run on one CUDA device with torch tensors as buffers.

    The engine accepts batches within its optimization profile [min, max]; larger batches are split, smaller
    ones zero-padded."""

    def __init__(self, trt, path: str | os.PathLike, device: torch.device):
        super().__init__()
        self.trt = trt
        self.path = Path(path)
        self.device = torch.device(device)
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise CheckpointError(
                f"{self.path} cannot be deserialized by TensorRT {trt.__version__}: an engine "
                "runs only with the TensorRT version and GPU model that built it; rebuild it "
                "with mae gen_trt_engine on this machine"
            )
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if n not in ins]
        if len(ins) != 1 or len(outs) < 1:
            raise CheckpointError(
                f"{self.path}: expected one image input and an output, found inputs {ins} and outputs {outs}"
            )
        self.input_name, self.output_name = ins[0], outs[0]
        self.input_shape = tuple(self.engine.get_tensor_shape(self.input_name))
        if self.input_shape[0] < 0:
            lo, _opt, hi = self.engine.get_tensor_profile_shape(self.input_name, 0)
            self.min_batch, self.max_batch = int(lo[0]), int(hi[0])
        else:
            self.min_batch = self.max_batch = int(self.input_shape[0])
        self.in_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.input_name))
        self.out_dtype = _torch_dtype(trt, self.engine.get_tensor_dtype(self.output_name))
        self.num_classes = int(self.engine.get_tensor_shape(self.output_name)[-1])

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        x = imgs.detach().to(self.device, self.in_dtype).contiguous()
        outs = []
        for part, n in _chunks(x, self.max_batch, self.min_batch):
            part = part.contiguous()
            self.context.set_input_shape(self.input_name, tuple(part.shape))
            out = torch.empty(
                tuple(self.context.get_tensor_shape(self.output_name)),
                dtype=self.out_dtype,
                device=self.device,
            )
            self.context.set_tensor_address(self.input_name, part.data_ptr())
            self.context.set_tensor_address(self.output_name, out.data_ptr())
            stream = torch.cuda.current_stream(self.device).cuda_stream if self.device.type == "cuda" else 0
            if not self.context.execute_async_v3(stream):
                raise RuntimeError(
                    f"TensorRT failed to run {self.path} on a batch of shape {list(part.shape)}"
                )
            if self.device.type == "cuda":
                torch.cuda.current_stream(self.device).synchronize()
            outs.append(out[:n])
        return torch.cat(outs).float().to(imgs.device)


def _torch_dtype(trt, dtype) -> torch.dtype:
    return torch.from_numpy(np.zeros(0, dtype=trt.nptype(dtype))).dtype


def _check_kind(meta: dict[str, Any], file: Path, key: str, stage: str | None, what: str) -> None:
    """Only classifier exports run in evaluate/inference; the spec's stage must agree."""
    if meta.get("output", "logits") == "features":
        if stage == "finetune":
            raise CheckpointError(
                f"{key}: {file} is {what} of a pretrain checkpoint (the encoder as a feature extractor), but "
                "train.stage=finetune needs a classifier; export a finetune checkpoint"
            )
        raise CheckpointError(
            f"{key}: {file} is {what} of a pretrain checkpoint: the encoder as a feature extractor (output "
            "[N, D] features); the reconstruction loss and images need the MAE decoder and masking, which are "
            "not exported; give the pretrain .ckpt checkpoint instead"
        )
    if stage == "pretrain":
        raise CheckpointError(
            f"{key}: {file} is {what} of a finetune checkpoint (a classifier), but train.stage=pretrain needs "
            "an MAE (pretrain) checkpoint; set train.stage=finetune"
        )


def _square_size(shape: tuple[int, ...], file: Path, key: str) -> int:
    h, w = shape[-2], shape[-1]
    if h <= 0 or w <= 0 or h != w:
        raise CheckpointError(
            f"{key}: {file} takes input {list(shape[1:])}; evaluate and inference feed "
            "square images of a fixed size: export with input_height == input_width"
        )
    return int(h)


def _loaded(
    network: nn.Module, meta: dict[str, Any], file: Path, cfg: ExperimentConfig, img_size: int, key: str
):
    classes = meta.get("classes")
    if classes is not None and network.num_classes is not None and len(classes) != network.num_classes:
        raise CheckpointError(f"{key}: {file} names {len(classes)} classes but outputs {network.num_classes}")
    if not meta:
        log.info(
            "%s: %s has no mae metadata (exported elsewhere?); treating it as a classifier with class "
            "indices for names",
            key,
            file,
        )
    return LoadedModel(
        network=network,
        stage="finetune",
        arch=meta.get("arch", cfg.model.arch),
        img_size=img_size,
        classes=classes,
        path=file,
        meta=meta,
    )


def load_onnx_model(cfg: ExperimentConfig, path: str | os.PathLike, *, key: str, stage: str | None = None):
    """An .onnx file (or a results folder holding one) as a LoadedModel run by onnxruntime."""
    file = resolve_onnx(path, key=key, model_name=cfg.model_name)
    meta = read_onnx_metadata(file, key=key)
    _check_kind(meta, file, key, stage, "an ONNX export")
    net = OnnxNetwork(file)
    if net.input_name != INPUT_NAME or net.output_name != OUTPUT_NAME:
        log.info(
            "%s: %s names its input/output %r/%r (ours are %r/%r)",
            key,
            file,
            net.input_name,
            net.output_name,
            INPUT_NAME,
            OUTPUT_NAME,
        )
    if net.num_classes is None:
        raise CheckpointError(f"{key}: {file} has no fixed output width; it is not a classifier export")
    return _loaded(net, meta, file, cfg, _square_size(net.input_shape, file, key), key)


def load_engine_model(cfg: ExperimentConfig, path: str | os.PathLike, *, key: str, stage: str | None = None):
    """A TensorRT engine (or a gen_trt_engine results folder) as a LoadedModel; needs TensorRT and a GPU.

    Its metadata (classes, stage) comes from the `<engine>.json` sidecar that gen_trt_engine writes."""
    from mae.deploy.tensorrt_build import require_tensorrt

    file = resolve_engine(path, key=key, model_name=cfg.model_name)
    meta = read_engine_metadata(file).get("mae", {})
    _check_kind(meta, file, key, stage, "a TensorRT engine")
    section = getattr(cfg, key.split(".")[0], None)
    gpu = (getattr(section, "gpu_ids", None) or [0])[0]
    trt = require_tensorrt(gpu, what=key.split(".")[0] + " with a TensorRT engine")
    net = TrtNetwork(trt, file, torch.device("cuda", gpu))
    return _loaded(net, meta, file, cfg, _square_size(net.input_shape, file, key), key)

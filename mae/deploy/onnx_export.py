"""A trained network -> one checked ONNX file, verified against PyTorch with onnxruntime before it is kept.

What is exported:
  classifier (finetune checkpoint)   input [N, C, H, W] normalised images -> output [N, num_classes] logits
  MAE (pretrain checkpoint)          input [N, C, H, W] -> output [N, D] pooled encoder features of the whole,
                                     unmasked image: the model's `forward_features` (ViT: mean of the normed patch
                                     tokens; ConvNeXt V2: global average of the last feature map; Hiera: mean of
                                     the last stage's tokens). The decoder and masking are not exported.
Input and output are named `input` and `output`; the batch dimension is dynamic (`batch`) or fixed.

Exporter: the TorchScript-based `torch.onnx.export(..., dynamo=False)`. It keeps TAO's opset 17 and exports all
three families. Measured with torch 2.14 / onnxscript 0.7: the dynamo exporter writes opset 18 and cannot convert
these models down to 17 (the ONNX version converter fails on Reduce* axes), and it fails on Hiera (its
attention calls SDPA with 5-D tensors). `exporter="dynamo"` is available for opset >= 18 (ViT and ConvNeXt V2).

Steps, all in a temporary folder beside the destination: export, attach metadata (mae.deploy.metadata), save as
one file, or as `<name>.onnx` + `<name>.onnx.data` when the weights reach the 2 GB protobuf limit,
`onnx.checker` (full check), parity with onnxruntime. Only then are the files moved into place, so a failure
never leaves a partial or unchecked file behind.

Parity: the same seeded inputs go through PyTorch (float32, CPU) and onnxruntime (CPU); the check fails when
    max |onnxruntime - PyTorch|  >  PARITY_TOLERANCE * max(1, max |PyTorch|)
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from mae.deploy.errors import ParityError
from mae.deploy.metadata import FORMAT, to_props
from mae.deploy.resolve import check_free
from mae.errors import ConfigError

PARITY_TOLERANCE = 1e-4  # relative to max(1, max |PyTorch output|)
# The protobuf limit is 2 GiB for the whole file; leave room for the graph itself.
SINGLE_FILE_LIMIT = 2**31 - 2**24
EXPORTERS = ("torchscript", "dynamo")
INPUT_NAME, OUTPUT_NAME = "input", "output"


class EncoderFeatures(nn.Module):
    """An MAE's encoder as a feature extractor: imgs [N, C, H, W] -> [N, D] (`forward_features`)."""

    def __init__(self, mae: nn.Module):
        super().__init__()
        self.mae = mae

    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        return self.mae.forward_features(imgs)


def exportable(model: nn.Module) -> tuple[nn.Module, str]:
    """(module to export, output kind): a classifier as is ("logits"); an MAE as its encoder ("features")."""
    from mae.models.base import MaskedAutoencoder

    if isinstance(model, MaskedAutoencoder):
        return EncoderFeatures(model).eval(), "features"
    return model.eval(), "logits"


def data_path(onnx_path: str | os.PathLike) -> Path:
    """The external-data file that goes with an .onnx file when the weights exceed the single-file limit."""
    onnx_path = Path(onnx_path)
    return onnx_path.with_name(onnx_path.name + ".data")


@dataclass
class ExportResult:
    path: Path
    data_path: Path | None  # the external weights file, when one was needed
    output: str  # "logits" | "features"
    input_shape: tuple[int, int, int]  # C, H, W
    batch: int | str  # fixed batch size or "dynamic"
    output_dim: int
    opset: int
    exporter: str
    max_abs_diff: float
    tolerance: float
    parity_batches: tuple[int, ...]
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)


def export_network(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    input_shape: tuple[int, int, int],
    batch_size: int = -1,
    opset: int = 17,
    metadata: dict[str, Any] | None = None,
    device: str | torch.device = "cpu",
    overwrite: bool = False,
    verbose: bool = False,
    exporter: str = "torchscript",
    seed: int = 0,
) -> ExportResult:
    """Export `model` (a classifier, or an MAE whose encoder becomes a feature extractor) to `path`.

    batch_size -1 makes the batch dimension dynamic; the parity check then runs at batch 1 and 3. An existing
    `path` (or its `.onnx.data`) is a ConfigError unless `overwrite`. `model` ends on the CPU, in eval mode.
    """
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    if exporter == "dynamo" and opset < 18:
        raise ConfigError(
            f"export.opset_version={opset}: the dynamo exporter writes opset 18 or later "
            "(it cannot convert these models down); use opset_version >= 18"
        )
    t0 = time.perf_counter()
    path = Path(path)
    data = data_path(path)
    check_free([path, data], key="export.onnx_file", overwrite=overwrite, overwrite_key="export.overwrite")
    net, output = exportable(model)
    dynamic = batch_size == -1
    c, h, w = input_shape
    example_batch = 2 if dynamic else batch_size  # not 1: the tracer must not specialise on a size-1 batch
    g = torch.Generator().manual_seed(seed)
    example = torch.randn(example_batch, c, h, w, generator=g)
    with torch.no_grad():
        out_dim = int(net.cpu()(example).shape[-1])

    path.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        raw = work / "raw" / "model.onnx"
        raw.parent.mkdir()
        _torch_export(
            net.to(device),
            example.to(device),
            raw,
            opset=opset,
            dynamic=dynamic,
            verbose=verbose,
            exporter=exporter,
        )
        net.cpu()
        import onnx

        proto = onnx.load(str(raw))  # with its external data, if the exporter wrote any
        meta = {
            "format": FORMAT,
            "output": output,
            "input_shape": [c, h, w],
            "batch": "dynamic" if dynamic else batch_size,
            "opset": opset,
            **(metadata or {}),
        }
        meta["feature_dim" if output == "features" else "num_classes"] = out_dim
        del proto.metadata_props[:]
        for k, v in to_props(meta).items():
            proto.metadata_props.add(key=k, value=v)
        proto.producer_name = "mae-automl"
        external = initializer_bytes(proto) >= SINGLE_FILE_LIMIT
        staged = work / path.name
        onnx.save_model(
            proto,
            str(staged),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=1024,
        )
        del proto
        onnx.checker.check_model(str(staged), full_check=True)
        batches = (1, 3) if dynamic else (batch_size,)
        diff, tol = check_parity(net, staged, (c, h, w), batches, seed=seed)
        # Into place: the weights first, then the graph that names them (checking again: the export took time).
        check_free(
            [path, data], key="export.onnx_file", overwrite=overwrite, overwrite_key="export.overwrite"
        )
        if external:
            os.replace(work / data.name, data)
        else:
            data.unlink(missing_ok=True)  # a stale .data of an overwritten large export
        os.replace(staged, path)
        for p in (path, data) if external else (path,):
            os.chmod(p, _default_file_mode())  # temp files are private (0600); the export is not
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return ExportResult(
        path=path,
        data_path=data if external else None,
        output=output,
        input_shape=(c, h, w),
        batch="dynamic" if dynamic else batch_size,
        output_dim=out_dim,
        opset=opset,
        exporter=exporter,
        max_abs_diff=diff,
        tolerance=tol,
        parity_batches=batches,
        seconds=time.perf_counter() - t0,
        metadata=meta,
    )


def _torch_export(
    net: nn.Module,
    example: torch.Tensor,
    path: Path,
    *,
    opset: int,
    dynamic: bool,
    verbose: bool,
    exporter: str,
) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        if not verbose:
            # The exporter's own chatter: tracer notes on shape asserts and the legacy-exporter deprecation.
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", UserWarning)
        if exporter == "torchscript":
            try:
                torch.onnx.export(
                    net,
                    (example,),
                    str(path),
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    do_constant_folding=True,
                    verbose=verbose,
                    dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic else None,
                )
            except torch.onnx.errors.UnsupportedOperatorError as e:
                first = str(e).splitlines()[0]
                raise ConfigError(
                    f"export.opset_version={opset}: {first}; raise export.opset_version (17 is the default)"
                ) from None
        else:
            torch.onnx.export(
                net,
                (example,),
                str(path),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                verbose=verbose,
                external_data=True,
                dynamic_shapes=({0: torch.export.Dim("batch")},) if dynamic else None,
            )


def _default_file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def initializer_bytes(proto) -> int:
    """Bytes of the weights in an in-memory ONNX model (initializers and Constant node tensors)."""
    from onnx import numpy_helper

    def size(t) -> int:
        return len(t.raw_data) if t.raw_data else numpy_helper.to_array(t).nbytes

    total = sum(size(t) for t in proto.graph.initializer)
    for node in proto.graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                total += size(a.t)
    return total


def parity_inputs(input_shape: tuple[int, int, int], batches: tuple[int, ...], seed: int) -> list[np.ndarray]:
    g = torch.Generator().manual_seed(seed + 1)
    return [torch.randn(b, *input_shape, generator=g).numpy() for b in batches]


def check_parity(
    net: nn.Module,
    onnx_path: Path,
    input_shape: tuple[int, int, int],
    batches: tuple[int, ...],
    *,
    seed: int = 0,
) -> tuple[float, float]:
    """(max abs difference, tolerance) between PyTorch (CPU, float32) and onnxruntime (CPU) on seeded inputs;
    a ParityError when the difference exceeds the tolerance."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    net = net.cpu().eval()
    diff, scale = 0.0, 1.0
    for x in parity_inputs(input_shape, batches, seed):
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).float().numpy()
        (out,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x})
        if out.shape != ref.shape:
            raise ParityError(
                f"onnxruntime returned shape {list(out.shape)} where PyTorch returns "
                f"{list(ref.shape)} (batch {x.shape[0]}); the export is wrong, nothing was written"
            )
        diff = max(diff, float(np.abs(out - ref).max()))
        scale = max(scale, float(np.abs(ref).max()))
    tol = PARITY_TOLERANCE * scale
    if not diff <= tol:  # also catches NaN
        raise ParityError(
            f"ONNX parity check failed: max |onnxruntime - PyTorch| = {diff:.3g} exceeds the tolerance {tol:.3g} "
            f"({PARITY_TOLERANCE:g} x max(1, max |output|)) at batch sizes {list(batches)}; nothing was "
            "written; try another export.opset_version"
        )
    return diff, tol

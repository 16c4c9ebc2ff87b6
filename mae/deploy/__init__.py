"""Deployment: ONNX export, TensorRT engines, and running either behind the interface evaluate/inference use.

    onnx_export.export_network(model, path, ...)   a PyTorch network -> one checked .onnx file (parity-tested)
    tensorrt_build.build_engine(trt, onnx, ...)    an .onnx file -> a serialized TensorRT engine
    runtime.load_onnx_model / load_engine_model   an .onnx file or engine -> mae.models.loaded.LoadedModel
    resolve.resolve_onnx / resolve_engine         a results folder standing where a file is expected

Nothing here imports TensorRT at import time: it is an optional extra (`pip install 'mae-automl[deploy]'`),
imported by `tensorrt_build.require_tensorrt`, which says what is missing and how to install it.
"""

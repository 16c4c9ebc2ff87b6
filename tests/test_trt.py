"""gen_trt_engine without TensorRT: the missing-dependency errors (real import path), and the builder's
profile/precision/workspace/timing-cache/parser logic against a fake `tensorrt` module that records calls.
The TensorRT runtime wrapper is exercised the same way, on CPU memory."""

from __future__ import annotations

import ctypes
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from mae.config import ExperimentConfig
from mae.deploy.errors import EngineBuildError
from mae.deploy.metadata import sidecar_path
from mae.deploy.runtime import TrtNetwork, load_engine_model
from mae.deploy.tensorrt_build import EngineSettings, build_engine, plan_profile, require_tensorrt
from mae.errors import CheckpointError, ConfigError, MissingDependencyError


# --------------------------------------------------------------------------------- a recording fake
class Rec:
    """Records every call made on the fake TensorRT objects, in order."""

    def __init__(self):
        self.calls: list[tuple] = []

    def __call__(self, *call):
        self.calls.append(call)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def find(self, name: str) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == name]


class FakeLayer:
    def __init__(self, name, rec):
        self.name, self.rec, self.num_outputs = name, rec, 2
        self._precision = None

    @property
    def precision(self):
        return self._precision

    @precision.setter
    def precision(self, v):
        self._precision = v
        self.rec("layer.precision", self.name, v)

    def set_output_type(self, i, dtype):
        self.rec("layer.set_output_type", self.name, i, dtype)


class FakeTensor:
    def __init__(self, name, shape):
        self.name, self.shape = name, shape


class FakeNetwork:
    def __init__(self, rec, input_shape, layers=("conv1", "head")):
        self.rec = rec
        self.num_inputs = 1
        self._input = FakeTensor("input", input_shape)
        self._layers = [FakeLayer(n, rec) for n in layers]
        self.num_layers = len(self._layers)

    def get_input(self, i):
        return self._input

    def get_layer(self, i):
        return self._layers[i]


class FakeParserError:
    def __init__(self, node, name, op, desc):
        self._n, self._name, self._op, self._desc = node, name, op, desc

    def node(self):
        return self._n

    def node_name(self):
        return self._name

    def node_operator(self):
        return self._op

    def desc(self):
        return self._desc

    def code(self):
        return "ErrorCode.UNSUPPORTED_NODE"


class FakeTimingCache:
    def __init__(self, data):
        self.data = data

    def serialize(self):
        return b"CACHE[" + self.data + b"]+new"


class FakeConfig:
    def __init__(self, rec):
        self.rec = rec
        self.cache = None
        self._int8 = None

    def set_memory_pool_limit(self, pool, size):
        self.rec("set_memory_pool_limit", pool, size)

    def set_flag(self, flag):
        self.rec("set_flag", flag)

    def add_optimization_profile(self, p):
        self.rec("add_optimization_profile", p)

    def create_timing_cache(self, data):
        self.rec("create_timing_cache", bytes(data))
        return FakeTimingCache(bytes(data))

    def set_timing_cache(self, cache, ignore_mismatch):
        self.cache = cache
        self.rec("set_timing_cache", ignore_mismatch)

    def get_timing_cache(self):
        return self.cache

    @property
    def int8_calibrator(self):
        return self._int8

    @int8_calibrator.setter
    def int8_calibrator(self, c):
        self._int8 = c
        self.rec("int8_calibrator", c)


class FakeProfile:
    def __init__(self, rec):
        self.rec = rec

    def set_shape(self, name, lo, opt, hi):
        self.rec("profile.set_shape", name, tuple(lo), tuple(opt), tuple(hi))


def make_fake_trt(
    *,
    input_shape=(-1, 3, 32, 32),
    version="10.3.0",
    parse_ok=True,
    parse_errors=(),
    build_ok=True,
    fast_fp16=True,
):
    rec = Rec()
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.rec = rec
    trt.float32, trt.float16 = "float32", "float16"
    trt.Logger = type(
        "Logger", (), {"WARNING": "W", "VERBOSE": "V", "__init__": lambda self, lvl: rec("Logger", lvl)}
    )
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8", OBEY_PRECISION_CONSTRAINTS="OBEY")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(EXPLICIT_BATCH=0)

    class Builder:
        platform_has_fast_fp16 = fast_fp16

        def __init__(self, logger):
            rec("Builder")

        def create_network(self, flags):
            rec("create_network", flags)
            trt.network = FakeNetwork(rec, input_shape)
            return trt.network

        def create_builder_config(self):
            return FakeConfig(rec)

        def create_optimization_profile(self):
            return FakeProfile(rec)

        def build_serialized_network(self, network, config):
            rec("build_serialized_network")
            return bytearray(b"ENGINE-BYTES") if build_ok else None

    class OnnxParser:
        def __init__(self, network, logger):
            self.num_errors = len(parse_errors)

        def parse_from_file(self, path):
            rec("parse_from_file", path)
            return parse_ok

        def get_error(self, i):
            return FakeParserError(*parse_errors[i])

    trt.Builder, trt.OnnxParser = Builder, OnnxParser
    return trt


@pytest.fixture
def gpu_present(monkeypatch):
    """Pretend one CUDA GPU is present (only for the code that checks; nothing runs on it)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture
def no_tensorrt(monkeypatch):
    """`import tensorrt` fails as on a machine without the package (sys.modules entry None -> ImportError)."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)


# ------------------------------------------------------------------------------ missing TensorRT / GPU
def test_missing_tensorrt_and_gpu_is_one_line_naming_both(no_tensorrt, no_gpu):
    with pytest.raises(MissingDependencyError) as e:
        require_tensorrt(0)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("gen_trt_engine needs TensorRT")
    assert "pip install 'mae-automl[deploy]'" in msg and "pip install tensorrt" in msg
    assert "NVIDIA GPU" in msg


def test_missing_tensorrt_only(no_tensorrt, gpu_present):
    with pytest.raises(
        MissingDependencyError, match="needs TensorRT, whose Python package is not installed"
    ) as e:
        require_tensorrt(0)
    assert "GPU" not in str(e.value)


def test_missing_gpu_only(monkeypatch, no_gpu):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt())
    with pytest.raises(MissingDependencyError, match=r"needs an NVIDIA GPU with CUDA") as e:
        require_tensorrt(0)
    assert "TensorRT" not in str(e.value)


def test_gpu_id_out_of_range(monkeypatch, gpu_present):
    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt())
    with pytest.raises(MissingDependencyError, match="GPU 3, but this machine has 1 GPU"):
        require_tensorrt(3)


def test_cli_gen_trt_engine_without_tensorrt_exits_nonzero_with_one_line(
    no_tensorrt, no_gpu, tmp_path, capsys
):
    from mae.cli import main

    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"unused: the dependency check comes first")
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"results_dir: {tmp_path / 'results'}\ngen_trt_engine:\n  onnx_file: {onnx_file}\n")
    rc = main(["gen_trt_engine", "-e", str(spec)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == MissingDependencyError.exit_code != 0
    assert len(err) == 1 and err[0].startswith("mae: error: gen_trt_engine needs TensorRT")
    assert not (tmp_path / "results" / "gen_trt_engine").exists()


def test_engine_model_without_tensorrt(no_tensorrt, no_gpu, tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"x")
    cfg = ExperimentConfig.model_validate({"evaluate": {"trt_engine": str(engine)}})
    with pytest.raises(MissingDependencyError, match="evaluate with a TensorRT engine needs TensorRT"):
        load_engine_model(cfg, engine, key="evaluate.trt_engine", stage="finetune")
    # A feature-extractor engine is refused for what it is, before TensorRT is needed.
    sidecar_path(engine).write_text(json.dumps({"mae": {"stage": "pretrain", "output": "features"}}))
    with pytest.raises(CheckpointError, match="TensorRT engine of a pretrain checkpoint"):
        load_engine_model(cfg, engine, key="evaluate.trt_engine", stage="pretrain")


# ------------------------------------------------------------------------------------ profile logic
def test_plan_profile():
    s = EngineSettings(min_batch=1, opt_batch=8, max_batch=32)
    p = plan_profile("input", (-1, 3, 224, 224), s)
    assert (p.min, p.opt, p.max) == ((1, 3, 224, 224), (8, 3, 224, 224), (32, 3, 224, 224)) and not p.notes
    # a fixed engine batch from a dynamic ONNX
    p = plan_profile(
        "input", (-1, 3, 64, 64), EngineSettings(min_batch=1, opt_batch=8, max_batch=32, batch_size=4)
    )
    assert p.min == p.opt == p.max == (4, 3, 64, 64) and "batch_size=4" in p.notes[0]
    # a fixed ONNX batch is kept; min/opt/max are ignored with a note
    p = plan_profile("input", (2, 3, 64, 64), s)
    assert p.min == p.opt == p.max == (2, 3, 64, 64) and "fixed batch of 2" in p.notes[0]
    assert not plan_profile("input", (2, 3, 64, 64), EngineSettings()).notes  # defaults: nothing to say
    with pytest.raises(ConfigError, match="batch_size=4, but the ONNX file has a fixed batch of 2"):
        plan_profile("input", (2, 3, 64, 64), EngineSettings(batch_size=4))
    with pytest.raises(ConfigError, match="only the batch dimension may be dynamic"):
        plan_profile("input", (-1, 3, -1, -1), s)


def test_settings_from_config():
    cfg = ExperimentConfig.model_validate(
        {
            "gen_trt_engine": {
                "timing_cache": "~/cache.bin",
                "batch_size": -1,
                "verbose": True,
                "tensorrt": {
                    "data_type": "FP32, fp16",
                    "workspace_size": 2048,
                    "min_batch_size": 2,
                    "opt_batch_size": 4,
                    "max_batch_size": 16,
                    "layers_precision": ["blocks.0/attn:fp32", "head:FP16"],
                },
            }
        }
    )
    s = EngineSettings.from_config(cfg.gen_trt_engine)
    assert s.precisions == ("fp32", "fp16") and s.workspace_mb == 2048
    assert (s.min_batch, s.opt_batch, s.max_batch, s.batch_size) == (2, 4, 16, -1)
    assert s.layers_precision == {"blocks.0/attn": "fp32", "head": "fp16"}
    assert s.timing_cache == Path("~/cache.bin").expanduser() and s.verbose
    # int8 never gets this far from a spec: the config rejects it with its message.
    from mae.spec import load_spec

    with pytest.raises(ConfigError, match="int8 needs a calibration dataset"):
        load_spec({"gen_trt_engine": {"tensorrt": {"data_type": "int8"}}})


# ------------------------------------------------------------------------------------ builder logic
def test_build_engine_fp16_profile_workspace_and_timing_cache(tmp_path):
    trt = make_fake_trt(input_shape=(-1, 3, 32, 32))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    s = EngineSettings(
        precisions=("fp32", "fp16"),
        workspace_mb=512,
        min_batch=1,
        opt_batch=4,
        max_batch=8,
        timing_cache=cache,
    )
    r = build_engine(trt, tmp_path / "m.onnx", s)
    rec = trt.rec
    assert r.engine == b"ENGINE-BYTES" and r.tensorrt_version == "10.3.0"
    assert rec.find("create_network") == [(0,)]  # TensorRT 10: explicit batch is implicit
    assert rec.find("parse_from_file") == [(str(tmp_path / "m.onnx"),)]
    assert rec.find("set_memory_pool_limit") == [("WORKSPACE", 512 * 2**20)]
    assert rec.find("set_flag") == [("FP16",)]
    assert rec.find("profile.set_shape") == [("input", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))]
    assert rec.find("create_timing_cache") == [(b"old",)] and rec.find("set_timing_cache") == [(False,)]
    names = rec.names()
    assert names.index("set_timing_cache") < names.index("build_serialized_network")
    assert cache.read_bytes() == b"CACHE[old]+new" and r.timing_cache_written == cache
    assert any("timing cache read" in n for n in r.notes)


def test_build_engine_fp32_new_cache_and_tensorrt8_flags(tmp_path):
    trt = make_fake_trt(version="8.6.1")
    cache = tmp_path / "sub" / "new.cache"
    r = build_engine(trt, tmp_path / "m.onnx", EngineSettings(timing_cache=cache))
    assert trt.rec.find("set_flag") == []  # fp32: no precision flag
    assert trt.rec.find("create_network") == [(1 << 0,)]  # TensorRT 8: EXPLICIT_BATCH
    assert trt.rec.find("create_timing_cache") == [(b"",)] and cache.read_bytes() == b"CACHE[]+new"
    assert r.profile.min == r.profile.max == (1, 3, 32, 32)
    r = build_engine(make_fake_trt(), tmp_path / "m.onnx", EngineSettings())  # no cache file: none written
    assert r.timing_cache_written is None


def test_build_engine_fp16_without_fast_fp16_notes_it(tmp_path):
    r = build_engine(
        make_fake_trt(fast_fp16=False), tmp_path / "m.onnx", EngineSettings(precisions=("fp16",))
    )
    assert any("no fast FP16" in n for n in r.notes)


def test_parser_errors_are_reported_per_node(tmp_path):
    trt = make_fake_trt(
        parse_ok=False,
        parse_errors=[
            (12, "/blocks.0/attn/Einsum", "Einsum", "unsupported op"),
            (-1, "", "", "model-level problem"),
        ],
    )
    with pytest.raises(EngineBuildError) as e:
        build_engine(trt, tmp_path / "m.onnx", EngineSettings())
    lines = str(e.value).splitlines()
    assert lines == [
        "TensorRT cannot parse m.onnx: node 12 '/blocks.0/attn/Einsum' (Einsum): unsupported op "
        "[ErrorCode.UNSUPPORTED_NODE]",
        "TensorRT cannot parse m.onnx: model: model-level problem [ErrorCode.UNSUPPORTED_NODE]",
    ]
    assert "build_serialized_network" not in trt.rec.names()


def test_failed_build_and_int8(tmp_path):
    with pytest.raises(EngineBuildError, match="could not build an engine from m.onnx"):
        build_engine(make_fake_trt(build_ok=False), tmp_path / "m.onnx", EngineSettings())
    trt = make_fake_trt()
    with pytest.raises(ConfigError, match="int8 needs a calibrator"):
        build_engine(trt, tmp_path / "m.onnx", EngineSettings(precisions=("int8",)))
    assert trt.rec.calls == []  # rejected before TensorRT is touched
    calib = object()
    build_engine(trt, tmp_path / "m.onnx", EngineSettings(precisions=("int8",)), calibrator=calib)
    assert trt.rec.find("set_flag") == [("INT8",)] and trt.rec.find("int8_calibrator") == [(calib,)]


def test_layer_precisions(tmp_path):
    trt = make_fake_trt()
    build_engine(
        trt, tmp_path / "m.onnx", EngineSettings(precisions=("fp16",), layers_precision={"head": "fp32"})
    )
    assert trt.rec.find("layer.precision") == [("head", "float32")]
    assert trt.rec.find("layer.set_output_type") == [("head", 0, "float32"), ("head", 1, "float32")]
    assert trt.rec.find("set_flag") == [("FP16",), ("OBEY",)]
    with pytest.raises(ConfigError, match="no layer named 'haed' \\(did you mean 'head'\\?\\)"):
        build_engine(make_fake_trt(), tmp_path / "m.onnx", EngineSettings(layers_precision={"haed": "fp16"}))


# ------------------------------------------------------------------------- the action, with the fake
@pytest.fixture
def onnx_export_dir(tmp_path):
    """A results folder whose export/ holds a small classifier ONNX file with class names."""
    from mae.deploy.onnx_export import export_network
    from mae.models import build_classifier
    from mae.models.testing import tiny_classifier_kwargs

    torch.manual_seed(0)
    net = build_classifier(
        "convnextv2_atto", 2, drop_path_rate=0.0, **tiny_classifier_kwargs("convnextv2_atto")
    )
    export_network(
        net,
        tmp_path / "results" / "export" / "mae.onnx",
        input_shape=(3, 64, 64),
        metadata={"stage": "finetune", "arch": "convnextv2_atto", "img_size": 64, "classes": ["a", "b"]},
    )
    return tmp_path / "results"


def test_gen_trt_engine_action_with_fake_tensorrt(
    monkeypatch, gpu_present, onnx_export_dir, tmp_path, capsys
):
    from mae.actions import gen_trt_engine

    trt = make_fake_trt(input_shape=(-1, 3, 64, 64))
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cache = tmp_path / "timing.cache"
    cfg = ExperimentConfig.model_validate(
        {
            "results_dir": str(onnx_export_dir),
            "gen_trt_engine": {
                "timing_cache": str(cache),
                "tensorrt": {
                    "data_type": "fp32,fp16",
                    "min_batch_size": 1,
                    "opt_batch_size": 2,
                    "max_batch_size": 4,
                },
            },
        }
    )  # onnx_file unset: this results_dir's export/
    out = gen_trt_engine.run(cfg)
    printed = capsys.readouterr().out
    engine = onnx_export_dir / "gen_trt_engine" / "mae.engine"
    assert out["trt_engine"] == str(engine) and engine.read_bytes() == b"ENGINE-BYTES"
    assert f"using {onnx_export_dir / 'export' / 'mae.onnx'}" in printed and "min/opt/max = 1/2/4" in printed
    side = json.loads(sidecar_path(engine).read_text())
    assert side["mae"]["classes"] == ["a", "b"] and side["mae"]["output"] == "logits"
    assert side["engine"]["profile"] == {"min": [1, 3, 64, 64], "opt": [2, 3, 64, 64], "max": [4, 3, 64, 64]}
    assert side["engine"]["data_type"] == "fp32,fp16" and side["engine"]["tensorrt_version"] == "10.3.0"
    assert cache.read_bytes() == b"CACHE[]+new"
    status = [json.loads(x)["status"] for x in (engine.parent / "status.json").read_text().splitlines()]
    assert status == ["STARTED", "SUCCESS"]
    # Overwrite protection, then an explicit overwrite (the second build reads the cache the first wrote).
    engine.write_bytes(b"mine")
    with pytest.raises(ConfigError, match="refusing to overwrite: set gen_trt_engine.overwrite=true"):
        gen_trt_engine.run(cfg)
    assert engine.read_bytes() == b"mine"
    gen_trt_engine.run(cfg, overwrite=True)
    assert engine.read_bytes() == b"ENGINE-BYTES" and cache.read_bytes() == b"CACHE[CACHE[]+new]+new"


def test_gen_trt_engine_action_reports_a_failed_build(monkeypatch, gpu_present, onnx_export_dir):
    from mae.actions import gen_trt_engine

    monkeypatch.setitem(sys.modules, "tensorrt", make_fake_trt(build_ok=False, input_shape=(-1, 3, 64, 64)))
    cfg = ExperimentConfig.model_validate(
        {
            "results_dir": str(onnx_export_dir),
            "gen_trt_engine": {"onnx_file": str(onnx_export_dir / "export")},
        }
    )
    with pytest.raises(EngineBuildError):
        gen_trt_engine.run(cfg)
    folder = onnx_export_dir / "gen_trt_engine"
    assert sorted(p.name for p in folder.iterdir()) == ["status.json"]  # no engine, no sidecar
    assert json.loads((folder / "status.json").read_text().splitlines()[-1])["status"] == "FAILURE"


# ------------------------------------------------------------------- the runtime wrapper, with a fake
def make_fake_runtime(rec_batches: list, *, lo=1, hi=2, fixed=None):
    """A fake engine computing output[n] = (sum of input[n], -sum of input[n]) through raw pointers, as
    TensorRT would write to the device buffers it is given."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.3.0"
    trt.Logger = type("Logger", (), {"WARNING": "W", "__init__": lambda self, lvl: None})
    trt.TensorIOMode = types.SimpleNamespace(INPUT="IN", OUTPUT="OUT")
    trt.nptype = lambda dt: np.float32
    chw = (3, 4, 4)

    class Context:
        def __init__(self):
            self.addr, self.shape = {}, None

        def set_input_shape(self, name, shape):
            self.shape = tuple(shape)

        def get_tensor_shape(self, name):
            return (self.shape[0], 2)

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            n = self.shape[0]
            rec_batches.append(n)
            count = n * int(np.prod(chw))
            x = np.ctypeslib.as_array((ctypes.c_float * count).from_address(self.addr["input"])).reshape(
                n, -1
            )
            y = np.stack([x.sum(1), -x.sum(1)], 1).astype(np.float32)
            ctypes.memmove(self.addr["output"], y.ctypes.data, y.nbytes)
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ["input", "output"][i]

        def get_tensor_mode(self, name):
            return "IN" if name == "input" else "OUT"

        def get_tensor_shape(self, name):
            return (fixed or -1, *chw) if name == "input" else (fixed or -1, 2)

        def get_tensor_profile_shape(self, name, i):
            return (lo, *chw), (lo, *chw), (hi, *chw)

        def get_tensor_dtype(self, name):
            return "float"

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"good" else None

    trt.Runtime = Runtime
    return trt


@pytest.mark.parametrize(
    ("lo", "hi", "fixed", "expected_batches"),
    [(1, 2, None, [2, 2, 1]), (2, 4, None, [4, 2]), (3, 3, 3, [3, 3])],
)
def test_trt_network_splits_and_pads_batches(tmp_path, lo, hi, fixed, expected_batches):
    path = tmp_path / "m.engine"
    path.write_bytes(b"good")
    seen: list[int] = []
    net = TrtNetwork(make_fake_runtime(seen, lo=lo, hi=hi, fixed=fixed), path, torch.device("cpu"))
    assert net.num_classes == 2 and (net.min_batch, net.max_batch) == ((fixed or lo), (fixed or hi))
    x = torch.randn(5, 3, 4, 4)
    out = net(x)
    s = x.flatten(1).sum(1)
    torch.testing.assert_close(out, torch.stack([s, -s], 1), atol=1e-5, rtol=1e-5)
    assert seen == expected_batches


def test_trt_network_refuses_a_foreign_engine(tmp_path):
    path = tmp_path / "m.engine"
    path.write_bytes(b"built elsewhere")
    with pytest.raises(
        CheckpointError, match="runs only with the TensorRT version and GPU model that built it"
    ):
        TrtNetwork(make_fake_runtime([]), path, torch.device("cpu"))

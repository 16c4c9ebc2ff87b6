"""mae.deploy.profile: deploy metrics measured on the exported model, exact counts, and the cache."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest
import torch

from mae.deploy import profile as prof
from mae.deploy.profile import (
    ModelSpec,
    ProfileCache,
    ProfileSettings,
    build_exportable,
    cache_key,
    count_flops,
    deploy_metrics,
    profile_model,
    used_parameters,
)
from mae.errors import ConfigError, MissingDependencyError
from mae.metrics import DEPLOY_METRIC_MODES


def vit_hand_count(*, dim, depth, heads, patch, size, classes, chans=3, mlp=4, head=True):
    """(parameters, flops at batch 1) of a timm-style ViT written out by hand: patch conv, cls token, learned
    position embedding, `depth` pre-norm blocks (qkv, proj, 2-layer MLP), then fc_norm + linear head (finetune)
    or the final norm alone (the MAE encoder's features). Flops: 2 per multiply-add of matmuls, the patch
    convolution and attention's two products."""
    patches = (size // patch) ** 2
    tokens = patches + 1
    block = 2 * dim + (dim * 3 * dim + 3 * dim) + (dim * dim + dim) + 2 * dim
    block += (dim * mlp * dim + mlp * dim) + (mlp * dim * dim + dim)
    params = (chans * patch * patch * dim + dim) + dim + tokens * dim + depth * block + 2 * dim
    params += (dim * classes + classes) if head else 0
    conv = 2 * patches * dim * chans * patch * patch
    linear = 2 * tokens * (3 * dim * dim + dim * dim + 2 * mlp * dim * dim)
    attention = 2 * heads * tokens * tokens * (dim // heads) * 2
    flops = conv + depth * (linear + attention) + (2 * dim * classes if head else 0)
    return params, flops


MICRO = dict(dim=128, depth=4, heads=4, patch=4, size=32)  # vit_micro_patch4 (mae/models/archs.py)


def test_params_and_flops_equal_a_hand_count():
    x = torch.randn(1, 3, 32, 32)
    net = build_exportable(ModelSpec("vit_micro_patch4", 32, num_classes=10))
    want_params, want_flops = vit_hand_count(**MICRO, classes=10)
    assert used_parameters(net, x) == want_params == 809_354
    assert count_flops(net, x) == want_flops == 111_677_952
    # pretrain: the encoder as exported, without the decoder, the mask token or a head
    enc = build_exportable(ModelSpec("vit_micro_patch4", 32, stage="pretrain"))
    want_params, want_flops = vit_hand_count(**MICRO, classes=0, head=False)
    assert used_parameters(enc, x) == want_params == 808_064
    assert sum(p.numel() for p in enc.parameters()) > want_params  # the decoder is there, but not used
    assert count_flops(enc, x) == want_flops
    assert all(not p.requires_grad for n, p in enc.named_parameters() if n.endswith("pos_embed"))  # restored


def test_attention_is_counted_on_the_cpu():
    q = torch.randn(2, 4, 10, 8)
    k = torch.randn(2, 4, 12, 8)
    v = torch.randn(2, 4, 12, 16)

    class Attn(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v) + x

    assert count_flops(Attn(), torch.zeros(1)) == 2 * 2 * 4 * 10 * 12 * (8 + 16)


def test_cache_key_names_the_shape_and_settings():
    spec = ModelSpec("vit_tiny_patch4", 32, num_classes=10)
    key = cache_key(spec, ProfileSettings(runtime="onnxruntime-cpu"))
    assert key == (
        "arch=vit_tiny_patch4,input_size=32,num_classes=10,stage=finetune,in_chans=3,global_pool=True,"
        "batch=1,threads=1,runtime=onnxruntime-cpu,throughput_batch=32"
    )
    assert cache_key(spec, ProfileSettings(batch=4)) != cache_key(spec, ProfileSettings())
    assert cache_key(spec, ProfileSettings(threads=2)) != cache_key(spec, ProfileSettings())
    # a pretrain export has no head: its classes do not make another shape
    a = ModelSpec("vit_tiny_patch4", 32, num_classes=10, stage="pretrain")
    b = ModelSpec("vit_tiny_patch4", 32, num_classes=100, stage="pretrain")
    assert cache_key(a, ProfileSettings()) == cache_key(b, ProfileSettings())


def test_runtime_auto_picks_tensorrt_only_where_it_and_a_gpu_are(monkeypatch):
    monkeypatch.setattr(prof, "tensorrt_available", lambda: False)
    assert ProfileSettings().resolved().runtime == "onnxruntime-cpu"
    monkeypatch.setattr(prof, "tensorrt_available", lambda: True)
    assert ProfileSettings().resolved().runtime == "tensorrt"
    assert cache_key(ModelSpec("vit_micro_patch4", 32), ProfileSettings()).endswith(
        "runtime=tensorrt,throughput_batch=32,precision=fp32"
    )
    assert ProfileSettings(runtime="onnxruntime-cpu").resolved().runtime == "onnxruntime-cpu"


def test_tensorrt_runtime_without_tensorrt_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt fails, on any machine
    t0 = time.perf_counter()
    with pytest.raises(MissingDependencyError) as e:
        profile_model(ModelSpec("vit_micro_patch4", 32, num_classes=10), ProfileSettings(runtime="tensorrt"))
    msg = str(e.value)
    assert msg.startswith("deploy profiling with runtime tensorrt needs TensorRT") and "pip install" in msg
    assert len(msg.splitlines()) == 1
    assert time.perf_counter() - t0 < 5  # refused before building and exporting anything


def test_bad_settings_are_config_errors():
    with pytest.raises(ConfigError) as e:
        ProfileSettings(runs=10, threads=0, runtime="openvino").check()
    assert e.value.problems == [
        "deploy profile threads=0: must be >= 1",
        "deploy profile runs=10: latency is a median of at least 30 runs",
        "deploy profile runtime='openvino': one of auto, onnxruntime-cpu, tensorrt",
    ]
    with pytest.raises(ConfigError, match="did you mean 'vit_tiny_patch4'"):
        ModelSpec("vit_tiny_patch5", 32).check()
    with pytest.raises(ConfigError, match="train.stage: 'train' is not one of"):
        ModelSpec("vit_tiny_patch4", 32, stage="train").check()


def _fake_profile(calls, delay=0.0):
    def fake(spec, settings):
        calls.append((spec, settings))
        time.sleep(delay)
        return {"latency_ms": 1.0 + len(calls), "runtime": settings.runtime, "params_m": 0.1, "gflops": 0.2}

    return fake


def test_cache_hit_does_not_measure_again(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(prof, "profile_model", _fake_profile(calls))
    cache = ProfileCache(tmp_path / "automl" / "deploy_profile.json")
    spec = ModelSpec("vit_micro_patch4", 32, num_classes=10)
    first, cached = cache.get_or_measure(spec, ProfileSettings(runtime="onnxruntime-cpu"))
    assert not cached and len(calls) == 1
    again, cached = ProfileCache(cache.path).get_or_measure(spec, ProfileSettings(runtime="onnxruntime-cpu"))
    assert cached and again == first and len(calls) == 1
    _, cached = cache.get_or_measure(spec, ProfileSettings(runtime="onnxruntime-cpu", batch=8))
    assert not cached and len(calls) == 2
    data = json.loads(cache.path.read_text())
    assert data["version"] == 1 and len(data["entries"]) == 2
    assert cache.get(spec, ProfileSettings(runtime="onnxruntime-cpu")) == first
    assert sorted(p.name for p in cache.path.parent.iterdir()) == [
        "deploy_profile.json",
        "deploy_profile.json.lock",
    ]


def test_concurrent_requests_for_one_shape_measure_it_once(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(prof, "profile_model", _fake_profile(calls, delay=0.5))
    spec = ModelSpec("vit_micro_patch4", 32, num_classes=10)
    out = []

    def ask():
        out.append(ProfileCache(tmp_path / "cache.json").get_or_measure(spec))

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert sorted(cached for _, cached in out) == [False, True] and out[0][0] == out[1][0]


def test_a_damaged_cache_is_measured_again(tmp_path, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(prof, "profile_model", _fake_profile(calls))
    path = tmp_path / "cache.json"
    path.write_text("{not json")
    _, cached = ProfileCache(path).get_or_measure(ModelSpec("vit_micro_patch4", 32))
    assert not cached and len(calls) == 1 and "unreadable" in caplog.text
    assert json.loads(path.read_text())["version"] == 1


@pytest.mark.slow
def test_measured_metrics_tiny_is_slower_than_micro(tmp_path):
    cache = ProfileCache(tmp_path / "deploy_profile.json")
    settings = ProfileSettings(runtime="onnxruntime-cpu", throughput_batch=8, throughput_runs=3)
    micro, _ = cache.get_or_measure(ModelSpec("vit_micro_patch4", 32, num_classes=10), settings)
    tiny, _ = cache.get_or_measure(ModelSpec("vit_tiny_patch4", 32, num_classes=10), settings)
    for e in (micro, tiny):
        assert e["runtime"] == "onnxruntime-cpu" and e["threads"] == 1 and e["batch"] == 1
        assert e["latency_runs"] >= 30 and e["flops_per_mac"] == 2
        assert 0 < e["latency_ms_min"] <= e["latency_ms"] <= e["latency_ms_p90"]
        assert set(deploy_metrics(e)) == set(DEPLOY_METRIC_MODES)
    assert tiny["latency_ms"] > micro["latency_ms"]
    assert tiny["throughput_ips"] < micro["throughput_ips"]
    assert micro["params"] == 809_354 and micro["flops"] == 111_677_952
    assert (tiny["params"], tiny["flops"]) == vit_hand_count(
        dim=192, depth=12, heads=3, patch=4, size=32, classes=10
    )
    # the ONNX file holds the float32 weights: about 4 bytes per parameter
    assert 4 * tiny["params"] < tiny["onnx_bytes"] < 4.2 * tiny["params"]
    assert tiny["onnx_mb"] == tiny["onnx_bytes"] / 1e6
    # the cache now answers without measuring
    t0 = time.perf_counter()
    again, cached = ProfileCache(cache.path).get_or_measure(
        ModelSpec("vit_tiny_patch4", 32, num_classes=10), settings
    )
    assert cached and again == tiny and time.perf_counter() - t0 < 1

"""ONNX export: parity per family, dynamic/static batch, overwrite protection, external data, parent-model
resolution, and evaluate/inference through onnxruntime against the PyTorch checkpoint."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import mae.deploy.onnx_export as onnx_export
from mae.actions.loading import load_for_action, load_trained
from mae.config import ExperimentConfig
from mae.deploy.errors import ParityError
from mae.deploy.metadata import read_onnx_metadata
from mae.deploy.onnx_export import data_path, export_network
from mae.deploy.resolve import resolve_engine, resolve_onnx
from mae.deploy.runtime import OnnxNetwork, load_onnx_model
from mae.errors import CheckpointError, ConfigError
from mae.models import build_classifier, build_mae
from mae.models.testing import small_img_size, tiny_classifier_kwargs, tiny_mae_overrides

ARCH = "vit_tiny_patch4"  # real depth (12 blocks) at 32 px: ~5M parameters, round-trips through load_trained
CLASSES = ["cat", "dog", "emu"]
FAMILY_ARCHS = ["vit_tiny_patch4", "convnextv2_atto", "hiera_tiny_224"]


# ------------------------------------------------------------------------------------------------ helpers
def save_ckpt(path: Path, net: torch.nn.Module, **meta) -> Path:
    """A checkpoint laid out as the training engine writes it (Lightning state_dict + hyper_parameters.mae)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {"model." + k: v for k, v in net.state_dict().items()},
            "hyper_parameters": {"mae": {"arch": ARCH, "img_size": 32, **meta}},
        },
        path,
    )
    return path


def classifier(arch: str, num_classes: int, **kwargs) -> torch.nn.Module:
    """A classifier whose head gives logits of order 1 (a fresh head, std 2e-5, gives ~1e-4: too small for
    output comparisons to mean anything)."""
    net = build_classifier(arch, num_classes, drop_path_rate=0.0, **kwargs)
    torch.nn.init.normal_(net.get_classifier().weight, std=1.0)
    torch.nn.init.normal_(net.get_classifier().bias, std=0.5)
    return net.eval()


def finetune_ckpt(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    net = classifier(ARCH, len(CLASSES), img_size=32)
    return save_ckpt(
        path,
        net,
        stage="finetune",
        num_classes=len(CLASSES),
        global_pool=True,
        classes=CLASSES,
        spec={"dataset": {"augmentation": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}},
    )


def pretrain_ckpt(path: Path) -> Path:
    torch.manual_seed(1)
    net = build_mae(ARCH, img_size=32, decoder_depth=1, decoder_embed_dim=64)
    return save_ckpt(path, net, stage="pretrain", decoder_depth=1, decoder_embed_dim=64, norm_pix_loss=True)


def make_cfg(tmp: Path, **sections) -> ExperimentConfig:
    data = {"results_dir": str(tmp / "results"), "model": {"arch": ARCH}, **sections}
    return ExperimentConfig.model_validate(data)


def with_overwrite(cfg: ExperimentConfig, section: str) -> ExperimentConfig:
    """cfg with `<section>.overwrite: true`."""
    sec = getattr(cfg, section)
    return cfg.model_copy(update={section: sec.model_copy(update={"overwrite": True})})


def ort_run(path: Path, x: torch.Tensor) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["output"], {"input": x.numpy()})[0]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpts")
    return {"finetune": finetune_ckpt(d / "ft.ckpt"), "pretrain": pretrain_ckpt(d / "pt.ckpt")}


@pytest.fixture(scope="module")
def exported(ckpts, tmp_path_factory):
    """The finetune checkpoint exported by the action (dynamic batch), shared by the read-only tests."""
    from mae.actions import export

    tmp = tmp_path_factory.mktemp("exported")
    cfg = make_cfg(tmp, export={"checkpoint": str(ckpts["finetune"])})
    summary = export.run(cfg)
    return Path(summary["onnx_file"]), summary, cfg


# ------------------------------------------------------------------------------------- parity per family
@pytest.mark.parametrize("arch", FAMILY_ARCHS)
@pytest.mark.parametrize("kind", ["classifier", "mae"])
def test_parity_each_family(arch, kind, tmp_path):
    torch.manual_seed(0)
    if kind == "classifier":
        net = classifier(arch, 5, **tiny_classifier_kwargs(arch))
    else:
        net = build_mae(arch, **tiny_mae_overrides(arch))
    s = small_img_size(arch)
    r = export_network(net, tmp_path / "m.onnx", input_shape=(3, s, s))
    onnx.checker.check_model(str(r.path), full_check=True)
    assert r.max_abs_diff <= r.tolerance
    assert r.output == ("logits" if kind == "classifier" else "features")
    meta = read_onnx_metadata(r.path)
    assert meta["output"] == r.output and meta["batch"] == "dynamic" and meta["input_shape"] == [3, s, s]
    # An independent check on inputs the export never saw.
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(42))
    with torch.no_grad():
        ref = (net(x) if kind == "classifier" else net.forward_features(x)).numpy()
    out = ort_run(r.path, x)
    assert out.shape == ref.shape == (2, r.output_dim)
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=1e-4)
    if kind == "mae":  # the encoder only: no decoder weights in the file
        names = [t.name for t in onnx.load(str(r.path)).graph.initializer]
        assert not any("decoder" in n or "mask_token" in n for n in names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp files, no external data


def test_dynamo_exporter_and_its_opset_floor(tmp_path):
    torch.manual_seed(0)
    net = classifier("vit_tiny_patch4", 4, **tiny_classifier_kwargs("vit_tiny_patch4"))
    with pytest.raises(ConfigError, match="opset_version=17: the dynamo exporter"):
        export_network(net, tmp_path / "d.onnx", input_shape=(3, 32, 32), exporter="dynamo", opset=17)
    r = export_network(net, tmp_path / "d.onnx", input_shape=(3, 32, 32), exporter="dynamo", opset=18)
    assert r.max_abs_diff <= r.tolerance
    assert onnx.load(str(r.path)).opset_import[0].version == 18
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.onnx"]  # weights inside (< 2 GB)


# ---------------------------------------------------------------------------------------------- batches
def test_dynamic_batch_runs_at_1_and_5(exported, ckpts):
    path, summary, cfg = exported
    assert summary["batch"] == "dynamic"
    dim0 = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param == "batch" and not dim0.HasField("dim_value")
    torch_net = load_trained(cfg, str(ckpts["finetune"]), key="t").network
    for b in (1, 5):
        x = torch.randn(b, 3, 32, 32, generator=torch.Generator().manual_seed(b))
        out = ort_run(path, x)
        with torch.no_grad():
            ref = torch_net(x).numpy()
        assert out.shape == (b, len(CLASSES))
        np.testing.assert_allclose(out, ref, atol=1e-5, rtol=1e-4)


def test_static_batch_is_fixed_and_runtime_splits_and_pads(tmp_path):
    torch.manual_seed(0)
    net = classifier("convnextv2_atto", 3, **tiny_classifier_kwargs("convnextv2_atto"))
    r = export_network(net, tmp_path / "s.onnx", input_shape=(3, 64, 64), batch_size=2)
    assert r.batch == 2 and r.parity_batches == (2,)
    assert onnx.load(str(r.path)).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    with pytest.raises(Exception, match="(?i)dimension|shape|index"):
        ort_run(r.path, torch.randn(3, 3, 64, 64))  # onnxruntime itself refuses another batch
    x = torch.randn(5, 3, 64, 64)
    out = OnnxNetwork(r.path)(x)  # 2 + 2 + (1 padded to 2)
    with torch.no_grad():
        np.testing.assert_allclose(out.numpy(), net(x).numpy(), atol=1e-5, rtol=1e-4)


# --------------------------------------------------------------------------------------- export action
def test_export_action_writes_checked_file_with_metadata(exported, ckpts):
    path, summary, cfg = exported
    assert path == Path(cfg.results_dir) / "export" / "mae.onnx"
    assert summary["output"] == "logits" and summary["output_dim"] == len(CLASSES)
    assert summary["opset_version"] == 17 and summary["external_data"] is None
    assert 0 <= summary["max_abs_diff"] <= summary["tolerance"] and summary["tolerance"] >= 1e-4
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == [
        "output"
    ]
    meta = read_onnx_metadata(path)
    assert meta["stage"] == "finetune" and meta["arch"] == ARCH and meta["img_size"] == 32
    assert meta["classes"] == CLASSES and meta["num_classes"] == 3
    assert meta["mean"] == [0.5, 0.5, 0.5] and meta["std"] == [
        0.25,
        0.25,
        0.25,
    ]  # the checkpoint's, not the spec's
    assert meta["source"] == str(ckpts["finetune"])
    lines = [json.loads(x) for x in (path.parent / "status.json").read_text().splitlines()]
    assert [x["status"] for x in lines] == ["STARTED", "SUCCESS"]
    assert lines[-1]["kpi"]["max_abs_diff"] == summary["max_abs_diff"]
    assert sorted(p.name for p in path.parent.iterdir()) == ["mae.onnx", "status.json"]


def test_overwrite_protection(ckpts, tmp_path, capsys):
    from mae.actions import export
    from mae.cli import main

    cfg = make_cfg(
        tmp_path, export={"checkpoint": str(ckpts["finetune"]), "onnx_file": str(tmp_path / "out.onnx")}
    )
    export.run(cfg)
    target = tmp_path / "out.onnx"
    before = target.read_bytes()
    with pytest.raises(
        ConfigError, match=r"already exists; refusing to overwrite: set export.overwrite=true"
    ):
        export.run(cfg)
    assert target.read_bytes() == before
    # Through the CLI: one line, exit code 2, file untouched.
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps(cfg.model_dump(mode="json")))
    capsys.readouterr()
    assert main(["export", "-e", str(spec)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "refusing to overwrite" in err[0]
    assert target.read_bytes() == before
    # An external-data file of the same name alone also blocks the export.
    target.unlink()
    data_path(target).write_bytes(b"someone's weights")
    with pytest.raises(ConfigError, match=r"out.onnx.data already exists"):
        export.run(cfg)
    assert data_path(target).read_bytes() == b"someone's weights" and not target.exists()
    # Asked explicitly: both replaced (the stale .data of an old large export goes, as it no longer belongs).
    target.write_bytes(b"an old export")
    summary = export.run(with_overwrite(cfg, "export"))
    assert Path(summary["onnx_file"]) == target and not data_path(target).exists()
    assert read_onnx_metadata(target)["classes"] == CLASSES


def test_large_model_goes_to_external_data(monkeypatch, tmp_path):
    monkeypatch.setattr(onnx_export, "SINGLE_FILE_LIMIT", 1)  # every model counts as "over 2 GB"
    torch.manual_seed(0)
    net = classifier("vit_tiny_patch4", 4, **tiny_classifier_kwargs("vit_tiny_patch4"))
    r = export_network(net, tmp_path / "big.onnx", input_shape=(3, 32, 32))
    assert r.data_path == tmp_path / "big.onnx.data"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert r.data_path.stat().st_size > 5 * r.path.stat().st_size  # the weights live in the .data file
    onnx.checker.check_model(str(r.path), full_check=True)
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(ort_run(r.path, x), net(x).numpy(), atol=1e-5, rtol=1e-4)
    with pytest.raises(ConfigError, match="already exist"):
        export_network(net, tmp_path / "big.onnx", input_shape=(3, 32, 32))


def test_parity_failure_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setattr(onnx_export, "PARITY_TOLERANCE", -1.0)
    torch.manual_seed(0)
    net = classifier("vit_tiny_patch4", 4, **tiny_classifier_kwargs("vit_tiny_patch4"))
    with pytest.raises(ParityError, match=r"ONNX parity check failed: max \|onnxruntime - PyTorch\|"):
        export_network(net, tmp_path / "p.onnx", input_shape=(3, 32, 32))
    assert list(tmp_path.iterdir()) == []


def test_export_input_checks(ckpts, tmp_path):
    from mae.actions import export

    base = {"checkpoint": str(ckpts["finetune"])}
    with pytest.raises(ConfigError, match="input_channel=1.*set export.input_channel=3"):
        export.run(make_cfg(tmp_path, export={**base, "input_channel": 1}))
    with pytest.raises(ConfigError, match="trained at 32 px"):
        export.run(make_cfg(tmp_path, export={**base, "input_height": 64, "input_width": 64}))
    with pytest.raises(ConfigError, match="opset_version=13: .*scaled_dot_product_attention"):
        export.run(make_cfg(tmp_path, export={**base, "opset_version": 13}))
    with pytest.raises(ConfigError, match="export.checkpoint: required"):
        export.run(make_cfg(tmp_path))
    assert not (tmp_path / "results" / "export" / "mae.onnx").exists()


def test_pretrain_export_is_an_encoder_feature_extractor(ckpts, tmp_path):
    from mae.actions import export

    cfg = make_cfg(tmp_path, export={"checkpoint": str(ckpts["pretrain"])}, train={"stage": "pretrain"})
    summary = export.run(cfg)
    path = Path(summary["onnx_file"])
    assert summary["output"] == "features" and summary["output_dim"] == 192  # ViT-tiny width
    meta = read_onnx_metadata(path)
    assert meta["stage"] == "pretrain" and meta["feature_dim"] == 192 and "classes" not in meta
    mae_net = load_trained(cfg, str(ckpts["pretrain"]), key="t").network
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        np.testing.assert_allclose(
            ort_run(path, x), mae_net.forward_features(x).numpy(), atol=1e-5, rtol=1e-4
        )
    # evaluate/inference cannot reconstruct with it: a clear error, whichever stage the spec says.
    ev = make_cfg(tmp_path, evaluate={"checkpoint": str(path)})
    with pytest.raises(CheckpointError, match="feature extractor.*reconstruction.*give the pretrain .ckpt"):
        load_for_action(ev, ev.evaluate, "evaluate", stage="pretrain")
    with pytest.raises(CheckpointError, match="train.stage=finetune needs a classifier"):
        load_for_action(ev, ev.evaluate, "evaluate", stage="finetune")


# ------------------------------------------------------------------------------- parent-model resolution
def test_parent_resolution_on_a_results_folder_with_several_checkpoints(tmp_path, capsys):
    from mae.actions import export

    run_dir = tmp_path / "job1"
    ck = run_dir / "train" / "checkpoints"
    for i, name in enumerate(["epoch-0.ckpt", "best.ckpt", "last.ckpt"]):  # last written last: the newest
        finetune_ckpt(ck / name, seed=10 + i)
    cfg = make_cfg(tmp_path, export={"checkpoint": str(run_dir)})
    capsys.readouterr()
    summary = export.run(cfg)
    printed = capsys.readouterr().out
    assert f"export.checkpoint: using {ck / 'best.ckpt'} (from results folder {run_dir})" in printed
    path = Path(summary["onnx_file"])
    assert read_onnx_metadata(path)["source"] == str(ck / "best.ckpt")
    x = torch.randn(3, 3, 32, 32)
    outs = {
        n: load_trained(cfg, str(ck / n), key="t").network(x).detach().numpy()
        for n in ["best.ckpt", "last.ckpt"]
    }
    np.testing.assert_allclose(ort_run(path, x), outs["best.ckpt"], atol=1e-5, rtol=1e-4)
    assert np.abs(outs["best.ckpt"] - outs["last.ckpt"]).max() > 0.1  # the choice is visible in the outputs

    # gen_trt_engine/evaluate ONNX inputs: an export results folder (or its parent) stands for its ONNX file.
    export_dir = path.parent
    assert resolve_onnx(export_dir, key="gen_trt_engine.onnx_file", model_name="mae") == path
    assert resolve_onnx(tmp_path / "results", key="k", model_name="mae") == path
    assert "k: using" in capsys.readouterr().out
    other = export_dir / "other.onnx"
    other.write_bytes(path.read_bytes())  # newer, but not named after model_name
    assert resolve_onnx(export_dir, key="k", model_name="mae") == path
    assert resolve_onnx(export_dir, key="k", model_name="nomatch") == other  # else the newest
    with pytest.raises(CheckpointError, match="holds no ONNX file"):
        resolve_onnx(ck, key="gen_trt_engine.onnx_file")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        resolve_onnx(tmp_path / "nope", key="gen_trt_engine.onnx_file")
    # An ONNX model given as a folder runs in evaluate (load_for_action -> mae.deploy.runtime).
    ev = make_cfg(tmp_path, evaluate={"checkpoint": str(export_dir)}, model_name="mae")
    loaded = load_for_action(ev, ev.evaluate, "evaluate", stage="finetune")
    assert isinstance(loaded.network, OnnxNetwork) and loaded.path == path

    # Engines: a gen_trt_engine results folder stands for its engine (model_name first).
    eng = tmp_path / "results" / "gen_trt_engine"
    eng.mkdir(parents=True)
    (eng / "zzz.engine").write_bytes(b"x")
    (eng / "mae.engine").write_bytes(b"y")
    (eng / "mae.engine.json").write_text("{}")
    assert (
        resolve_engine(tmp_path / "results", key="evaluate.trt_engine", model_name="mae")
        == eng / "mae.engine"
    )


# --------------------------------------------------------------------------- evaluate / inference via ONNX
def test_evaluate_and_inference_via_onnx_equal_the_checkpoint(exported, ckpts, tmp_path):
    from mae.actions.common import classification_metrics

    path, _, _ = exported
    ev_ckpt = make_cfg(tmp_path, evaluate={"checkpoint": str(ckpts["finetune"])})
    ev_onnx = make_cfg(tmp_path, evaluate={"checkpoint": str(path)})
    by_ckpt = load_for_action(ev_ckpt, ev_ckpt.evaluate, "evaluate", stage="finetune")
    by_onnx = load_for_action(ev_onnx, ev_onnx.evaluate, "evaluate", stage="finetune")
    assert isinstance(by_onnx.network, OnnxNetwork)
    for attr in ("stage", "arch", "img_size", "classes"):
        assert getattr(by_onnx, attr) == getattr(by_ckpt, attr)
    assert by_onnx.network.num_classes == by_ckpt.network.num_classes == 3

    g = torch.Generator().manual_seed(7)
    batches = [
        (torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 3, (n,), generator=g)) for n in (4, 4, 3)
    ]
    cpu = torch.device("cpu")
    m_ckpt = classification_metrics(by_ckpt.network, batches, cpu, 3)
    m_onnx = classification_metrics(by_onnx.network, batches, cpu, 3)
    assert m_onnx["ACC_all"] == m_ckpt["ACC_all"] and m_onnx["ACC_top5"] == m_ckpt["ACC_top5"]
    assert torch.equal(m_onnx["confusion"], m_ckpt["confusion"]) and m_onnx["num_images"] == 11
    assert m_onnx["val_loss"] == pytest.approx(m_ckpt["val_loss"], abs=1e-5)


def test_evaluate_and_inference_actions_via_onnx_equal_the_checkpoint(exported, ckpts, tmp_path):
    """The whole evaluate and inference actions on the same images, once with the checkpoint, once with the
    ONNX file (run by onnxruntime)."""
    from PIL import Image

    from mae.actions import evaluate, inference

    path, _, _ = exported
    rng = np.random.default_rng(0)
    val = tmp_path / "val"
    for c in CLASSES:
        (val / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(val / c / f"{i}.png")
    results, rows = {}, {}
    for name, ck in (("ckpt", ckpts["finetune"]), ("onnx", path)):
        cfg = make_cfg(
            tmp_path / name,
            train={"stage": "finetune"},
            model={"arch": ARCH, "num_classes": 3},
            dataset={
                "val_data_sources": str(val),
                "test_data_sources": str(val),
                "batch_size": 4,
                "num_workers_per_gpu": 0,
            },
            evaluate={"checkpoint": str(ck)},
            inference={"checkpoint": str(ck)},
        )
        results[name] = evaluate.run(cfg)
        out = inference.run(cfg)
        rows[name] = list(csv.reader(open(out["output"])))
    assert results["onnx"]["checkpoint"] == str(path)
    assert results["onnx"]["ACC_all"] == results["ckpt"]["ACC_all"]
    assert results["onnx"]["ACC_top5"] == results["ckpt"]["ACC_top5"]
    assert results["onnx"]["num_images"] == results["ckpt"]["num_images"] == 9
    assert results["onnx"]["val_loss"] == pytest.approx(results["ckpt"]["val_loss"], abs=1e-5)
    assert rows["onnx"][0] == rows["ckpt"][0] == ["path", "class_name", "class_index", "score"]
    assert len(rows["onnx"]) == 10
    for a, b in zip(rows["onnx"][1:], rows["ckpt"][1:], strict=True):
        assert a[:3] == b[:3] and float(a[3]) == pytest.approx(float(b[3]), abs=2e-6)


def test_onnx_loading_errors(tmp_path):
    cfg = make_cfg(tmp_path)
    bad = tmp_path / "bad.onnx"
    bad.write_text("not a model")
    with pytest.raises(CheckpointError, match="is not a readable ONNX file"):
        load_onnx_model(cfg, bad, key="evaluate.checkpoint", stage="finetune")
    # Non-square input: evaluate/inference feed square images.
    torch.manual_seed(0)
    net = classifier("convnextv2_atto", 3, **tiny_classifier_kwargs("convnextv2_atto"))
    r = export_network(net, tmp_path / "wide.onnx", input_shape=(3, 64, 96))
    with pytest.raises(CheckpointError, match=r"takes input \[3, 64, 96\].*input_height == input_width"):
        load_onnx_model(cfg, r.path, key="evaluate.checkpoint", stage="finetune")
    # An ONNX classifier from elsewhere (no mae metadata) still runs, with class indices for names.
    foreign = tmp_path / "foreign.onnx"
    lin = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)).eval()
    torch.onnx.export(
        lin,
        (torch.randn(1, 3, 8, 8),),
        str(foreign),
        dynamo=False,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    loaded = load_onnx_model(cfg, foreign, key="inference.checkpoint", stage="finetune")
    assert loaded.classes is None and loaded.img_size == 8 and loaded.network.num_classes == 4
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        np.testing.assert_allclose(loaded.network(x).numpy(), lin(x).numpy(), atol=1e-5)

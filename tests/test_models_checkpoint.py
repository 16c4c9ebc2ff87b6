"""load_weights: file formats, stage / classes / arch errors, position-embedding resizing, the report."""

from __future__ import annotations

import pytest
import torch

import mae.models as M
from mae.errors import CheckpointError
from mae.models.testing import tiny_classifier_kwargs, tiny_mae_overrides


def vit_mae(**kw):
    torch.manual_seed(0)
    return M.build_mae("vit_tiny_patch4", **{**tiny_mae_overrides("vit_tiny_patch4"), **kw})


def vit_clf(num_classes=5, **kw):
    torch.manual_seed(1)
    return M.build_classifier(
        "vit_tiny_patch4", num_classes, **{**tiny_classifier_kwargs("vit_tiny_patch4"), **kw}
    )


def lightning_ckpt(model, path):
    """What our Lightning module saves: the network is its attribute `model`."""
    sd = {f"model.{k}": v for k, v in model.state_dict().items()}
    sd["knn_bank.features"] = torch.zeros(3)  # another attribute of the Lightning module
    torch.save({"state_dict": sd, "epoch": 4, "global_step": 40, "pytorch-lightning_version": "2.6.6"}, path)
    return path


def assert_same_weights(a, b, keys=None):
    sa, sb = a.state_dict(), b.state_dict()
    for k in keys or sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("arch", ["vit_tiny_patch4", "convnextv2_atto", "hiera_tiny_224"])
def test_lightning_pretrain_checkpoint_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    src = M.build_mae(arch, **tiny_mae_overrides(arch))
    path = lightning_ckpt(src, tmp_path / "last.ckpt")
    torch.manual_seed(9)
    dst = M.build_mae(arch, **tiny_mae_overrides(arch))
    report = M.load_weights(dst, path, expect="pretrain")
    assert report.source_kind == "pretrain" and report.missing == [] and report.unexpected == []
    assert_same_weights(src, dst)


def test_official_and_bare_and_ddp_layouts(tmp_path):
    src = vit_clf()
    sd = src.state_dict()
    for obj in ({"model": sd}, sd, {f"module.{k}": v for k, v in sd.items()}, {"model_state": sd}):
        torch.save(obj, tmp_path / "w.pth")
        dst = vit_clf()
        torch.nn.init.zeros_(dst.head.weight)
        report = M.load_weights(dst, tmp_path / "w.pth", expect="classifier")
        assert report.missing == [] and report.unexpected == []
        assert_same_weights(src, dst)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(src.eval()(x), dst.eval()(x))


def test_classifier_checkpoint_where_pretrain_is_needed(tmp_path):
    path = lightning_ckpt(vit_clf(), tmp_path / "finetuned.ckpt")
    with pytest.raises(CheckpointError, match="finetuned classifier checkpoint.*pretraining") as e:
        M.load_weights(vit_mae(), path, expect="pretrain")
    assert "\n" not in str(e.value)


def test_pretrain_checkpoint_where_classifier_is_needed(tmp_path):
    path = lightning_ckpt(vit_mae(), tmp_path / "pretrain.ckpt")
    with pytest.raises(
        CheckpointError, match="pretrain checkpoint without a classification head.*finetune it"
    ):
        M.load_weights(vit_clf(), path, expect="classifier")
    encoder_only = tmp_path / "encoder.pth"
    torch.save({"model": vit_mae().encoder_state_dict()}, encoder_only)
    with pytest.raises(CheckpointError, match="encoder checkpoint without a classification head"):
        M.load_weights(vit_clf(), encoder_only, expect="classifier")


def test_num_classes_mismatch(tmp_path):
    path = lightning_ckpt(vit_clf(10), tmp_path / "best.ckpt")
    with pytest.raises(
        CheckpointError, match="head for 10 classes but model.num_classes is 4.*num_classes: 10"
    ):
        M.load_weights(vit_clf(4), path, expect="classifier")
    # As a backbone for a new task the old head is simply left out.
    report = M.load_weights(vit_clf(4), path, expect="encoder")
    assert report.source_kind == "classifier"
    assert set(report.ignored) == {"head.weight", "head.bias"}
    assert set(report.missing) == {"head.weight", "head.bias"}


def test_arch_mismatch(tmp_path):
    path = tmp_path / "small.ckpt"
    torch.manual_seed(0)
    lightning_ckpt(M.build_mae("vit_small_patch16", img_size=32, depth=1, decoder_depth=1), path)
    with pytest.raises(CheckpointError, match="does not fit model.arch=vit_tiny_patch16.*other shapes"):
        M.load_weights(
            M.build_mae("vit_tiny_patch16", img_size=32, depth=1, decoder_depth=1), path, expect="pretrain"
        )
    conv = M.build_mae("convnextv2_atto", **tiny_mae_overrides("convnextv2_atto"))
    with pytest.raises(CheckpointError, match="does not fit model.arch=convnextv2_atto.*none of its"):
        M.load_weights(conv, tmp_path / "small.ckpt", expect="encoder")


def test_unreadable_and_missing_files(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as e:
        M.load_weights(vit_mae(), junk, expect="pretrain")
    assert "\n" not in str(e.value)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        M.load_weights(vit_mae(), tmp_path / "nope.ckpt", expect="pretrain")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="not a state dict"):
        M.load_weights(vit_mae(), tmp_path / "list.pth", expect="pretrain")


def test_position_embeddings_follow_the_image_size():
    src = vit_mae()  # 32 px: 8 x 8 patches
    big = vit_clf(img_size=64)  # 16 x 16 patches
    report = M.load_weights(big, src.encoder_state_dict(), expect="encoder")
    assert report.resized == ["pos_embed [1, 65, 192] -> [1, 257, 192]"]
    assert "pos_embed" not in report.missing
    grid = src.pos_embed[0, 1:].reshape(8, 8, -1).permute(2, 0, 1)[None]
    expected = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic", antialias=True)
    assert torch.allclose(big.pos_embed[0, 1:], expected[0].permute(1, 2, 0).reshape(256, -1), atol=1e-5)
    assert torch.equal(big.pos_embed[0, 0], src.pos_embed[0, 0])

    # An MAE keeps its own fixed sin-cos tables (exact for its grid) and takes the rest.
    big_mae = vit_mae(img_size=64)
    sincos = big_mae.pos_embed.detach().clone()
    report = M.load_weights(big_mae, src.state_dict(), expect="pretrain")
    assert {r.split(" ")[0] for r in report.resized} == {"pos_embed", "decoder_pos_embed"}
    assert report.missing == []
    assert torch.equal(big_mae.pos_embed, sincos)
    assert torch.equal(big_mae.blocks[0].attn.qkv.weight, src.blocks[0].attn.qkv.weight)


def test_hiera_learned_position_embedding_is_resampled():
    torch.manual_seed(0)
    src = M.build_mae("hiera_tiny_224", **tiny_mae_overrides("hiera_tiny_224"))  # 64 px: 16 x 16 tokens
    clf = M.build_classifier("hiera_tiny_224", 3, img_size=96, stages=(1, 1, 1, 1))  # 24 x 24 tokens
    report = M.load_weights(clf, src.encoder_state_dict(), expect="encoder")
    assert report.resized == ["pos_embed [1, 256, 96] -> [1, 576, 96]"]
    assert torch.isfinite(clf(torch.randn(1, 3, 96, 96))).all()


def test_report_text():
    report = M.load_weights(vit_clf(), vit_mae().state_dict(), expect="encoder")
    text = str(report)
    assert text.startswith("loaded ") and "missing: fc_norm.weight" in text and "ignored: " in text


def test_expect_is_checked():
    with pytest.raises(ValueError, match="expect must be one of"):
        M.load_weights(vit_mae(), {}, expect="weights")
    with pytest.raises(ValueError, match="into a classifier"):
        M.load_weights(vit_mae(), vit_clf().state_dict(), expect="classifier")

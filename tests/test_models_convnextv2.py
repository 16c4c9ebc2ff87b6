"""ConvNeXt V2 FCMAE: masked regions cannot leak into visible ones, the dense masked encoder equals the
sparse one, the decoder follows the settings, and encoder weights (ours and official layouts) reach the
classifier."""

from __future__ import annotations

import math

import pytest
import torch

import mae.models as M
from mae.models.archs import ARCHS
from mae.models.convnextv2 import normalize_state_dict

CONVNEXT_ARCHS = [a for a, s in ARCHS.items() if s.family == "convnextv2"]


def fcmae(**kw) -> M.MaskedAutoencoder:
    torch.manual_seed(0)
    return M.build_mae("convnextv2_atto", **{"img_size": 64, "depths": (1, 1, 2, 1), **kw}).eval()


def test_mask_units_are_32_px():
    with torch.device("meta"):
        model = M.build_mae("convnextv2_base")
    assert model.patch_size == 32 and model.num_mask_units == 49
    assert M.build_mae("convnextv2_atto", img_size=96, depths=(1, 1, 1, 1)).num_mask_units == 9


def test_masked_pixels_do_not_leak_into_visible_positions():
    model = fcmae()
    x = torch.randn(2, 3, 64, 64)
    masking = model.random_masking(
        2, 0.5, torch.tensor([[0.1, 0.9, 0.8, 0.2], [0.7, 0.3, 0.1, 0.9]]), x.device
    )
    pixels = model.mask_to_pixels(masking.mask)  # [N, 1, H, W], 1 on masked pixels
    changed = x + pixels * 50.0 * torch.randn_like(x)  # new content on masked pixels only
    a = model.forward_encoder(x, masking)  # [N, D, 2, 2]
    b = model.forward_encoder(changed, masking)
    visible = (1 - masking.mask).reshape(2, 1, 2, 2)
    assert torch.equal(a * visible, b * visible)  # exactly: masked values never enter
    assert torch.all(a * (1 - visible) == 0)  # masked positions hold zero features
    # ...while visible content does matter.
    c = model.forward_encoder(x + (1 - pixels) * torch.randn_like(x), masking)
    assert not torch.allclose(a * visible, c * visible)


def test_dense_masked_encoder_equals_encoding_the_visible_unit_alone():
    """Sparse semantics: with only the top-left unit visible, its features equal those of the 32 x 32 crop
    encoded on its own (zero padding = zero masked neighbours; GRN over the visible positions only)."""
    model = fcmae()
    x = torch.randn(2, 3, 64, 64)
    noise = torch.tensor([[0.0, 1.0, 1.0, 1.0]]).expand(2, -1)  # keep unit 0
    masking = model.random_masking(2, 0.75, noise, x.device)
    masked = model.forward_encoder(x, masking)[:, :, 0, 0]  # [N, D]
    alone = model.encode(x[:, :, :32, :32], None)[:, :, 0, 0]
    assert torch.allclose(masked, alone, atol=1e-5)


def test_decoder_follows_model_settings():
    model = fcmae(decoder_depth=3, decoder_embed_dim=48)
    assert len(model.decoder_blocks) == 3
    assert model.decoder_embed.out_channels == 48 and model.mask_token.shape == (1, 48, 1, 1)
    assert model.decoder_pred.out_channels == 32 * 32 * 3
    with torch.device("meta"):
        default = M.build_mae("convnextv2_tiny")
    assert len(default.decoder_blocks) == 1 and default.decoder_embed.out_channels == 512


@pytest.mark.parametrize("arch", CONVNEXT_ARCHS)
def test_full_size_encoder_fills_the_classifier_backbone(arch):
    with torch.device("meta"):
        model = M.build_mae(arch)
        clf = M.build_classifier(arch, 1000)
    enc = {k: v.shape for k, v in model.encoder_state_dict().items()}
    own = {k: v.shape for k, v in clf.state_dict().items()}
    assert set(own) - set(enc) == {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}
    assert set(enc) <= set(own) and all(own[k] == enc[k] for k in enc)
    depths = ARCHS[arch].settings["depths"]
    assert [len(s.blocks) for s in clf.stages] == list(depths)


def test_classifier_features_are_the_pretrained_encoder_features():
    model = fcmae()
    clf = M.build_classifier("convnextv2_atto", 4, img_size=64, depths=(1, 1, 2, 1)).eval()
    M.load_weights(clf, model.encoder_state_dict(), expect="encoder")
    x = torch.randn(3, 3, 64, 64)
    pooled = model.forward_features(x)  # mean of the last feature map
    expected = torch.nn.functional.layer_norm(pooled, pooled.shape[-1:], eps=1e-6)  # head.norm at init
    assert torch.allclose(clf.forward_features(x), expected, atol=1e-4)


# ----------------------------------------------------------------------- official checkpoint layouts
def _minkowski_depthwise(w: torch.Tensor) -> torch.Tensor:
    """[C, 1, k, k] -> MinkowskiEngine depthwise kernel [k*k, C], offset index = x * k + y."""
    c, _, k, _ = w.shape
    out = torch.empty(k * k, c)
    for y in range(k):
        for x in range(k):
            out[x * k + y] = w[:, 0, y, x]
    return out


def _minkowski_conv(w: torch.Tensor) -> torch.Tensor:
    """[Cout, Cin, k, k] -> MinkowskiEngine kernel [k*k, Cin, Cout], offset index = x * k + y."""
    cout, cin, k, _ = w.shape
    out = torch.empty(k * k, cin, cout)
    for y in range(k):
        for x in range(k):
            out[x * k + y] = w[:, :, y, x].T
    return out


def _to_official_fcmae(sd: dict) -> dict:
    """Our FCMAE state dict written in the official sparse FCMAE layout (by hand, independently)."""
    out = {}
    for k, v in sd.items():
        p = k.split(".")
        if p[0] == "stem":  # dense stem conv + channels-first LayerNorm
            out[f"encoder.downsample_layers.0.{p[1]}.{p[2]}"] = v
        elif p[0] == "stages" and p[2] == "downsample":  # sparse LayerNorm + sparse 2x2 conv
            layer = p[3]
            if layer == "0":
                out[f"encoder.downsample_layers.{p[1]}.0.ln.{p[4]}"] = v
            else:
                out[f"encoder.downsample_layers.{p[1]}.1." + ("kernel" if p[4] == "weight" else "bias")] = (
                    _minkowski_conv(v) if p[4] == "weight" else v[None]
                )
        elif p[0] == "stages":
            base = f"encoder.stages.{p[1]}.{p[3]}"
            rest = ".".join(p[4:])
            if rest == "conv_dw.weight":
                out[f"{base}.dwconv.kernel"] = _minkowski_depthwise(v)
            elif rest == "conv_dw.bias":
                out[f"{base}.dwconv.bias"] = v[None]
            elif rest.startswith("norm."):
                out[f"{base}.norm.ln.{p[-1]}"] = v
            elif rest.startswith(("mlp.fc1.", "mlp.fc2.")):
                out[f"{base}.pwconv{rest[6]}.linear.{p[-1]}"] = v
            elif rest == "mlp.grn.weight":
                out[f"{base}.grn.gamma"] = v[None]
            elif rest == "mlp.grn.bias":
                out[f"{base}.grn.beta"] = v[None]
            else:
                raise AssertionError(k)
        elif p[0] == "decoder_embed":
            out[f"proj.{p[1]}"] = v
        elif p[0] == "decoder_pred":
            out[f"pred.{p[1]}"] = v
        elif p[0] == "decoder_blocks":
            rest = ".".join(p[2:])
            rest = (
                rest.replace("conv_dw.", "dwconv.")
                .replace("mlp.fc1.", "pwconv1.")
                .replace("mlp.fc2.", "pwconv2.")
            )
            rest = rest.replace("mlp.grn.weight", "grn.gamma").replace("mlp.grn.bias", "grn.beta")
            out[f"decoder.{p[1]}.{rest}"] = v.reshape(1, 1, 1, -1) if "grn" in rest else v
        else:
            out[k] = v  # mask_token
    return out


def test_official_sparse_fcmae_checkpoint_loads(tmp_path):
    """Self-consistency of the MinkowskiEngine -> dense conversion: the layout is written by hand here
    (kernel offset x * k + y, `.ln.`/`.linear.` infixes, [1, C] biases and GRN); no real file is available."""
    ours = fcmae()
    official = _to_official_fcmae(ours.state_dict())
    assert any(k.endswith("dwconv.kernel") for k in official)
    path = tmp_path / "convnextv2_atto_1k_224_fcmae.pt"
    torch.save({"model": official}, path)

    target = M.build_mae("convnextv2_atto", img_size=64, depths=(1, 1, 2, 1))
    report = M.load_weights(target, path, expect="pretrain")
    assert report.missing == [] and report.unexpected == []
    for k, v in ours.state_dict().items():
        assert torch.equal(target.state_dict()[k], v), k

    clf = M.build_classifier("convnextv2_atto", 5, img_size=64, depths=(1, 1, 2, 1))
    report = M.load_weights(clf, path, expect="encoder")
    assert set(report.missing) == {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}
    x = torch.randn(2, 3, 64, 64)
    pooled = ours.forward_features(x)
    expected = torch.nn.functional.layer_norm(pooled, pooled.shape[-1:], eps=1e-6)  # head.norm at init
    assert torch.allclose(clf.eval().forward_features(x), expected, atol=1e-4)


def test_official_finetuned_layout_is_renamed():
    sd = {
        "downsample_layers.0.0.weight": torch.zeros(40, 3, 4, 4),
        "downsample_layers.2.1.weight": torch.zeros(160, 80, 2, 2),
        "stages.3.1.dwconv.weight": torch.zeros(320, 1, 7, 7),
        "stages.3.1.pwconv1.weight": torch.zeros(1280, 320),
        "stages.3.1.grn.gamma": torch.zeros(1, 1, 1, 1280),
        "norm.weight": torch.zeros(320),
        "head.weight": torch.zeros(1000, 320),
    }
    assert set(normalize_state_dict(sd)) == {
        "stem.0.weight",
        "stages.2.downsample.1.weight",
        "stages.3.blocks.1.conv_dw.weight",
        "stages.3.blocks.1.mlp.fc1.weight",
        "stages.3.blocks.1.mlp.grn.weight",
        "head.norm.weight",
        "head.fc.weight",
    }


def test_layer_decay_groups_of_convnext_base():
    from mae.models.convnextv2 import layer_id, num_layers

    with torch.device("meta"):
        clf = M.build_classifier("convnextv2_base", 10)
    assert num_layers(clf) == 13
    assert layer_id("stem.0.weight", clf) == 0
    assert layer_id("stages.0.blocks.2.conv_dw.weight", clf) == 1
    assert layer_id("stages.1.downsample.1.weight", clf) == 2
    assert layer_id("stages.2.downsample.1.weight", clf) == 3
    assert [layer_id(f"stages.2.blocks.{b}.mlp.fc1.weight", clf) for b in (0, 2, 3, 26)] == [3, 3, 4, 11]
    assert layer_id("stages.3.blocks.0.norm.weight", clf) == 12
    assert layer_id("head.fc.weight", clf) == 13
    assert math.ceil(27 / 9) == 3

"""Hiera MAE: geometry, the keep/mask convention and unit order, decoder placement, and transfer to timm's
Hiera classifier."""

from __future__ import annotations

import pytest
import torch

import mae.models as M
from mae.models.archs import ARCHS

HIERA_ARCHS = [a for a, s in ARCHS.items() if s.family == "hiera"]


def hiera(**kw) -> M.MaskedAutoencoder:
    torch.manual_seed(0)
    base = {"img_size": 64, "stages": (1, 1, 1, 1), "decoder_depth": 1, "decoder_embed_dim": 64}
    return M.build_mae("hiera_tiny_224", **{**base, **kw}).eval()


def test_geometry_at_224():
    with torch.device("meta"):
        model = M.build_mae("hiera_base_224")
    assert model.num_mask_units == 49  # 32-px mask units
    assert model.patch_size == 16 and model.unit_patches == 2 and model.num_patches == 196
    assert model.decoder_pred.weight.shape == (16 * 16 * 3, 512)


def test_visible_units_keep_their_place_and_masked_units_are_dropped():
    """Stage 0 attends within mask units only, so where masked units' pixels are zero anyway the visible
    units' stage-0 features must equal the unmasked run's at the same units: this pins the convention
    (our mask: 1 = masked; timm's Hiera: True = keep) and the order of the visible units."""
    model = hiera(img_size=96)  # 3 x 3 mask units
    x = torch.randn(2, 3, 96, 96)
    noise = torch.rand(2, 9, generator=torch.Generator().manual_seed(0))
    masking = model.random_masking(2, 0.6, noise, x.device)  # 3 visible units per sample
    x = x * (1 - model.mask_to_pixels(masking.mask))  # masked pixels are zero
    masked_stage0 = model.forward_encoder(x, masking)[0]  # [N, K, 8, 8, C0]
    full_stage0 = model.encode(x, None)[1][0]  # [N, 24, 24, C0]
    assert masked_stage0.shape[:2] == (2, 3)
    for n in range(2):
        for j, unit in enumerate(masking.ids_keep[n].sort().values.tolist()):
            r, c = divmod(unit, 3)
            expected = full_stage0[n, r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8]
            assert torch.allclose(masked_stage0[n, j], expected, atol=1e-5), (n, unit)


def test_masked_pixels_do_not_reach_the_encoder():
    model = hiera()
    x = torch.randn(2, 3, 64, 64)
    masking = model.random_masking(2, 0.5, None, x.device)
    changed = x + 30.0 * model.mask_to_pixels(masking.mask) * torch.randn_like(x)
    for a, b in zip(model.forward_encoder(x, masking), model.forward_encoder(changed, masking), strict=True):
        assert torch.equal(a, b)


def test_decoder_puts_units_back_in_their_place():
    """No decoder block: each of the 2 x 2 outputs of a unit depends on that unit only."""
    model = hiera(decoder_depth=0)
    x = torch.randn(2, 3, 64, 64)
    masking = model.random_masking(2, 0.5, None, x.device)
    feats = model.forward_encoder(x, masking)
    pred = model.forward_decoder(feats, masking)  # [N, 16, 768], 4 x 4 patches of 16 px
    fused = model.decoder_embed(model.decoder_fusion_norm(model.fuse(feats)))  # [N, K, 4, Dd]
    pos = model.decoder_pos_embed[0]

    def head(t: torch.Tensor) -> torch.Tensor:
        return model.decoder_pred(model.decoder_norm(t))

    for n in range(2):
        visible = masking.ids_keep[n].sort().values.tolist()
        for unit in range(4):
            ur, uc = divmod(unit, 2)
            for sub in range(4):
                sr, sc = divmod(sub, 2)
                patch = (ur * 2 + sr) * 4 + (uc * 2 + sc)  # row-major on the 4 x 4 grid
                token = fused[n, visible.index(unit), sub] if unit in visible else model.mask_token[0, 0]
                assert torch.allclose(pred[n, patch], head(token + pos[patch]), atol=1e-5), (n, unit, sub)


def test_decoder_follows_model_settings():
    model = hiera(decoder_depth=3, decoder_embed_dim=96)
    assert len(model.decoder_blocks) == 3 and model.decoder_embed.out_features == 96
    assert model.decoder_blocks[0].attn.num_heads == 3
    assert (
        M.build_mae("hiera_tiny_224", img_size=64, stages=(1, 1, 1, 1), decoder_num_heads=2)
        .decoder_blocks[0]
        .attn.num_heads
        == 2
    )


@pytest.mark.parametrize("arch", HIERA_ARCHS)
def test_full_size_encoder_fills_the_classifier_backbone(arch):
    with torch.device("meta"):
        model = M.build_mae(arch)
        clf = M.build_classifier(arch, 1000)
    enc = {k: v.shape for k, v in model.encoder_state_dict().items()}
    own = {k: v.shape for k, v in clf.state_dict().items()}
    assert set(own) - set(enc) == {"head.norm.weight", "head.norm.bias", "head.fc.weight", "head.fc.bias"}
    assert set(enc) <= set(own) and all(own[k] == enc[k] for k in enc)
    assert len(clf.blocks) == sum(ARCHS[arch].settings["stages"])


def test_pretrained_encoder_changes_classifier_features():
    model = hiera()
    clf = M.build_classifier("hiera_tiny_224", 3, img_size=64, stages=(1, 1, 1, 1)).eval()
    x = torch.randn(2, 3, 64, 64)
    before = clf.forward_features(x)
    report = M.load_weights(clf, model.encoder_state_dict(), expect="encoder")
    assert report.unexpected == [] and len(report.loaded) == len(model.encoder_state_dict())
    assert not torch.allclose(before, clf.forward_features(x))
    # Pretraining pools queries twice, the classifier three times (at the start of the last stage): the
    # first three stages are the same network.
    ours = model.encode(x, None)[1]  # per stage [N, h, w, C]
    timm_stages = clf.forward_intermediates(x, indices=[0, 1, 2], output_fmt="NHWC", intermediates_only=True)
    for a, b in zip(ours[:3], timm_stages, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    assert ours[3].shape[1:3] == (4, 4) and clf.forward_intermediates(
        x, indices=[3], output_fmt="NHWC", intermediates_only=True
    )[0].shape[1:3] == (2, 2)

"""ViT MAE: the official MAE checkpoint layout, fixed sin-cos embeddings, the decoder's unshuffling, and
transfer to the timm classifier."""

from __future__ import annotations

import math

import pytest
import torch

import mae.models as M
from mae.models.base import sincos_2d


def official_mae_vit_keys(
    embed_dim: int, depth: int, patch: int, img: int = 224, dec_dim: int = 512, dec_depth: int = 8
) -> dict[str, tuple]:
    """Key -> shape of the MAE paper's released `mae_vit_*_dec512d8b` checkpoints, written out by hand."""
    num_tokens = (img // patch) ** 2 + 1

    def block(prefix: str, d: int) -> dict[str, tuple]:
        return {
            f"{prefix}.norm1.weight": (d,),
            f"{prefix}.norm1.bias": (d,),
            f"{prefix}.attn.qkv.weight": (3 * d, d),
            f"{prefix}.attn.qkv.bias": (3 * d,),
            f"{prefix}.attn.proj.weight": (d, d),
            f"{prefix}.attn.proj.bias": (d,),
            f"{prefix}.norm2.weight": (d,),
            f"{prefix}.norm2.bias": (d,),
            f"{prefix}.mlp.fc1.weight": (4 * d, d),
            f"{prefix}.mlp.fc1.bias": (4 * d,),
            f"{prefix}.mlp.fc2.weight": (d, 4 * d),
            f"{prefix}.mlp.fc2.bias": (d,),
        }

    keys = {
        "cls_token": (1, 1, embed_dim),
        "pos_embed": (1, num_tokens, embed_dim),
        "patch_embed.proj.weight": (embed_dim, 3, patch, patch),
        "patch_embed.proj.bias": (embed_dim,),
        "norm.weight": (embed_dim,),
        "norm.bias": (embed_dim,),
    }
    for i in range(depth):
        keys.update(block(f"blocks.{i}", embed_dim))
    decoder = {
        "mask_token": (1, 1, dec_dim),
        "decoder_embed.weight": (dec_dim, embed_dim),
        "decoder_embed.bias": (dec_dim,),
        "decoder_pos_embed": (1, num_tokens, dec_dim),
        "decoder_norm.weight": (dec_dim,),
        "decoder_norm.bias": (dec_dim,),
        "decoder_pred.weight": (patch * patch * 3, dec_dim),
        "decoder_pred.bias": (patch * patch * 3,),
    }
    for i in range(dec_depth):
        decoder.update(block(f"decoder_blocks.{i}", dec_dim))
    return {**keys, **decoder}


DECODER_PREFIXES = ("mask_token", "decoder_")


@pytest.mark.parametrize(
    ("arch", "embed_dim", "depth", "patch"),
    [
        ("vit_base_patch16", 768, 12, 16),
        ("vit_large_patch16", 1024, 24, 16),
        ("vit_huge_patch14", 1280, 32, 14),
    ],
)
def test_official_mae_key_names_and_shapes(arch, embed_dim, depth, patch):
    with torch.device("meta"):
        model = M.build_mae(arch)
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == official_mae_vit_keys(embed_dim, depth, patch)
    assert len(model.decoder_blocks) == 8 and model.decoder_blocks[0].attn.num_heads == 16
    assert model.num_mask_units == (224 // patch) ** 2


# The two loading tests use ViT-B/16 with 2 encoder blocks to stay fast; the full key list is checked above.
def test_published_full_checkpoint_loads_strictly():
    torch.manual_seed(0)
    official = {k: torch.randn(s) for k, s in official_mae_vit_keys(768, 2, 16).items()}
    model = M.build_mae("vit_base_patch16", depth=2)
    model.load_state_dict(official, strict=True)
    report = M.load_weights(model, {"model": official}, expect="pretrain")
    assert report.missing == [] and report.unexpected == [] and report.ignored == []
    assert torch.equal(model.decoder_pred.weight, official["decoder_pred.weight"])


def test_published_encoder_checkpoint_misses_exactly_the_decoder(tmp_path):
    keys = official_mae_vit_keys(768, 2, 16)
    encoder = {k: torch.randn(s) for k, s in keys.items() if not k.startswith(DECODER_PREFIXES)}
    path = tmp_path / "mae_pretrain_vit_base.pth"
    torch.save({"model": encoder}, path)

    mae_model = M.build_mae("vit_base_patch16", depth=2)
    report = M.load_weights(mae_model, path, expect="pretrain")
    assert report.source_kind == "encoder"
    assert set(report.missing) == {k for k in keys if k.startswith(DECODER_PREFIXES)}
    assert report.unexpected == []

    clf = M.build_classifier("vit_base_patch16", 10, depth=2)
    report = M.load_weights(clf, path, expect="encoder")
    assert set(report.missing) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert report.unexpected == []
    assert report.ignored == ["norm.weight", "norm.bias"]  # replaced by fc_norm under global pooling
    assert torch.equal(clf.blocks[1].mlp.fc2.weight, encoder["blocks.1.mlp.fc2.weight"])
    assert torch.equal(clf.pos_embed, encoder["pos_embed"])  # trained from here on, as in MAE finetuning


def test_sincos_values_at_known_positions():
    dim, grid = 8, (2, 3)
    emb = sincos_2d(dim, grid, cls_token=True)  # [1 + 6, 8]
    assert emb.shape == (7, 8) and torch.all(emb[0] == 0)

    def one_d(
        pos: float,
    ) -> list[float]:  # dim/2 = 4 channels: sin(pos*w0), sin(pos*w1), cos(pos*w0), cos(pos*w1)
        w = [1.0, 1.0 / 100.0]  # 10000^(-2d/4) for d = 0, 1
        return [math.sin(pos * w[0]), math.sin(pos * w[1]), math.cos(pos * w[0]), math.cos(pos * w[1])]

    for row in range(2):
        for col in range(3):
            token = 1 + row * 3 + col
            expected = torch.tensor(one_d(col) + one_d(row))  # first half: column, second half: row
            assert torch.allclose(emb[token], expected, atol=1e-6), (row, col)


def test_mae_position_embeddings_are_fixed_sincos():
    model = M.build_mae("vit_tiny_patch4", img_size=32, depth=1, decoder_depth=1)
    assert not model.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad
    assert torch.equal(model.pos_embed[0], sincos_2d(192, (8, 8), cls_token=True))
    assert torch.equal(model.decoder_pos_embed[0], sincos_2d(512, (8, 8), cls_token=True))


def test_encoder_equals_timm_vit_on_the_whole_image():
    """With nothing masked and noise in patch order, the MAE encoder is timm's ViT with the same weights."""
    torch.manual_seed(0)
    model = M.build_mae("vit_tiny_patch4", img_size=32, depth=2).eval()
    clf = M.build_classifier("vit_tiny_patch4", 3, img_size=32, depth=2, global_pool=False).eval()
    M.load_weights(clf, model.encoder_state_dict(), expect="encoder")
    x = torch.randn(2, 3, 32, 32)
    masking = model.random_masking(2, 0.0, torch.arange(64.0).expand(2, -1), x.device)
    latent = model.forward_encoder(x, masking)  # [N, 1 + L, D]
    tokens = super(type(clf), clf).forward_features(x)  # timm's unpooled tokens, after `norm`
    assert torch.allclose(latent, tokens, atol=1e-5)


def test_decoder_puts_every_token_back_in_its_place():
    """With no decoder block each output depends on its own token only, so placement can be checked exactly."""
    torch.manual_seed(0)
    model = M.build_mae("vit_tiny_patch4", img_size=32, depth=1, decoder_depth=0, decoder_embed_dim=32).eval()
    x = torch.randn(2, 3, 32, 32)
    masking = model.random_masking(2, 0.75, None, x.device)
    latent = model.forward_encoder(x, masking)
    pred = model.forward_decoder(latent, masking)

    def head(t: torch.Tensor) -> torch.Tensor:
        return model.decoder_pred(model.decoder_norm(t))

    pos = model.decoder_pos_embed[0, 1:]  # [L, Dd]
    for n in range(2):
        for j, unit in enumerate(masking.ids_keep[n].tolist()):
            expected = head(model.decoder_embed(latent[n, 1 + j]) + pos[unit])
            assert torch.allclose(pred[n, unit], expected, atol=1e-5)
        for unit in torch.nonzero(masking.mask[n]).flatten().tolist():
            assert torch.allclose(pred[n, unit], head(model.mask_token[0, 0] + pos[unit]), atol=1e-5)


def test_classifier_keys_match_timm_vit_on_meta():
    with torch.device("meta"):
        mae_model = M.build_mae("vit_large_patch16")
        clf = M.build_classifier("vit_large_patch16", 1000)
    enc = {k: v.shape for k, v in mae_model.encoder_state_dict().items()}
    own = {k: v.shape for k, v in clf.state_dict().items()}
    assert set(own) - set(enc) == {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"}
    assert set(enc) - set(own) == {"norm.weight", "norm.bias"}
    assert all(own[k] == enc[k] for k in own.keys() & enc.keys())

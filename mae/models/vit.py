"""ViT masked autoencoder (He et al., "Masked Autoencoders Are Scalable Vision Learners", 2021) and ViT classifier.

The MAE keeps the official checkpoint layout: `cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.N.*` (timm
Block naming), `norm`, `mask_token`, `decoder_embed`, `decoder_pos_embed`, `decoder_blocks.N.*`, `decoder_norm`,
`decoder_pred`, so published MAE checkpoints load without remapping. Both position embeddings are fixed 2-D
sin-cos (stored, not trained). The classifier is timm's VisionTransformer, whose encoder names are the same.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed
from timm.models.vision_transformer import Block, VisionTransformer

from mae.errors import ConfigError
from mae.models.archs import ArchSpec
from mae.models.base import (
    COMMON_MAE_OVERRIDES,
    MaskedAutoencoder,
    Masking,
    ModelFamily,
    check_divisible,
    check_overrides,
    init_small_head_,
    init_vit_style_,
    mae_kwargs,
    sincos_2d,
)

ENCODER_OVERRIDES = ("patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
MAE_OVERRIDES = COMMON_MAE_OVERRIDES + ENCODER_OVERRIDES + ("decoder_num_heads",)
CLASSIFIER_OVERRIDES = ENCODER_OVERRIDES

_norm = partial(nn.LayerNorm, eps=1e-6)


class MaskedAutoencoderViT(MaskedAutoencoder):
    """MAE with a ViT encoder over the visible patches and a light ViT decoder over all of them."""

    family = "vit"
    encoder_prefixes = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")

    def __init__(
        self,
        *,
        arch: str = "vit",
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ):
        super().__init__(
            arch=arch,
            img_size=img_size,
            patch_size=patch_size,
            unit_patches=1,
            in_chans=in_chans,
            mask_ratio=mask_ratio,
            norm_pix_loss=norm_pix_loss,
        )
        num_patches = self.num_patches  # L (= P: a mask unit is one patch)
        self.embed_dim = self.num_features = embed_dim

        # Encoder
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=_norm) for _ in range(depth)]
        )
        self.norm = _norm(embed_dim)

        # Decoder
        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=_norm)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = _norm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size * patch_size * in_chans)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Fixed sin-cos position embeddings; xavier-uniform linears and patch projection; tokens N(0, 0.02)."""
        with torch.no_grad():
            self.pos_embed.copy_(sincos_2d(self.pos_embed.shape[-1], self.grid_size, cls_token=True)[None])
            self.decoder_pos_embed.copy_(
                sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size, cls_token=True)[None]
            )
        w = self.patch_embed.proj.weight  # initialised as a linear layer on flattened patches
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(init_vit_style_)

    def encode(self, imgs: torch.Tensor, ids_keep: torch.Tensor | None) -> torch.Tensor:
        """imgs [N, C, H, W] -> [N, 1 + K, D]: class token + the patches in ids_keep [N, K] (all if None)."""
        x = self.patch_embed(imgs)  # [N, L, D]
        x = x + self.pos_embed[:, 1:, :]
        n, _, d = x.shape
        if ids_keep is not None:
            x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, d))  # [N, K, D] visible only
        cls = (self.cls_token + self.pos_embed[:, :1, :]).expand(n, -1, -1)  # [N, 1, D]
        x = torch.cat([cls, x], dim=1)  # [N, 1 + K, D]
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_encoder(self, imgs: torch.Tensor, masking: Masking) -> torch.Tensor:
        """imgs [N, C, H, W] -> latent [N, 1 + K, D] (class token + the K visible patches, noise order)."""
        return self.encode(imgs, masking.ids_keep)

    def forward_decoder(self, latent: torch.Tensor, masking: Masking) -> torch.Tensor:
        """latent [N, 1 + K, D] -> pred [N, L, p*p*C]: mask tokens at masked places, then the decoder."""
        x = self.decoder_embed(latent)  # [N, 1 + K, Dd]
        n, k1, dd = x.shape
        num_units = masking.ids_restore.shape[1]  # L
        mask_tokens = self.mask_token.to(x.dtype).expand(n, num_units + 1 - k1, -1)  # [N, L - K, Dd]
        x_ = torch.cat([x[:, 1:, :], mask_tokens], dim=1)  # [N, L, Dd] in shuffled order
        x_ = torch.gather(x_, 1, masking.ids_restore[..., None].expand(-1, -1, dd))  # [N, L, Dd] unshuffled
        x = torch.cat([x[:, :1, :], x_], dim=1)  # [N, 1 + L, Dd]
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        x = self.decoder_pred(x)  # [N, 1 + L, p*p*C]
        return x[:, 1:, :]  # drop the class token

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs -> [N, D]: mean of the normed patch tokens of the whole image (as a global-pool classifier)."""
        return self.encode(imgs, None)[:, 1:, :].mean(dim=1)


class ViTClassifier(VisionTransformer):
    """timm's VisionTransformer with `forward_features` returning pooled features [N, D].

    global_pool=True: mean of patch tokens -> fc_norm -> head (the encoder's final `norm` is dropped, as in
    MAE finetuning); global_pool=False: class token after `norm` -> head.
    """

    family = "vit"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, D]
        tokens = super().forward_features(x)  # [N, 1 + L, D]
        return self.forward_head(tokens, pre_logits=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, num_classes]
        return self.head(self.forward_features(x))


def _encoder_settings(spec: ArchSpec, overrides: dict) -> dict:
    settings = dict(spec.settings, mlp_ratio=4.0)
    settings.update({k: v for k, v in overrides.items() if k in ENCODER_OVERRIDES})
    check_divisible("model embed_dim", settings["embed_dim"], settings["num_heads"])
    return settings


def build_mae(arch: str, spec: ArchSpec, overrides: dict) -> MaskedAutoencoderViT:
    check_overrides(arch, overrides, MAE_OVERRIDES)
    return MaskedAutoencoderViT(**mae_kwargs(arch, spec, overrides), **_encoder_settings(spec, overrides))


def build_classifier(
    arch: str,
    spec: ArchSpec,
    *,
    num_classes: int,
    img_size: int,
    drop_path_rate: float,
    global_pool: bool,
    in_chans: int,
    overrides: dict,
) -> ViTClassifier:
    check_overrides(arch, overrides, CLASSIFIER_OVERRIDES)
    settings = _encoder_settings(spec, overrides)
    if img_size % settings["patch_size"]:
        raise ConfigError(
            f"dataset.augmentation.input_size: {img_size} is not a multiple of the patch size "
            f"{settings['patch_size']} of {arch}"
        )
    model = ViTClassifier(
        img_size=img_size,
        in_chans=in_chans,
        num_classes=num_classes,
        global_pool="avg" if global_pool else "token",
        qkv_bias=True,
        norm_layer=_norm,
        drop_path_rate=drop_path_rate,
        **settings,
    )
    init_small_head_(model.head)
    return model


def layer_id(name: str, model: nn.Module) -> int:
    """0 for the embeddings, i + 1 for blocks.i, len(blocks) + 1 for everything after (norms, head, decoder)."""
    if name.startswith(("cls_token", "pos_embed", "patch_embed.")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers(model)


def num_layers(model: nn.Module) -> int:
    return len(model.blocks) + 1


def normalize_state_dict(state_dict: dict) -> dict:
    """Official MAE (pretrain or finetuned) and timm ViT checkpoints already use our names."""
    return dict(state_dict)


FAMILY = ModelFamily(
    name="vit",
    build_mae=build_mae,
    build_classifier=build_classifier,
    layer_id=layer_id,
    num_layers=num_layers,
    normalize_state_dict=normalize_state_dict,
    head_prefix="head.",
    pos_embeds={"pos_embed": 1, "decoder_pos_embed": 1},
)

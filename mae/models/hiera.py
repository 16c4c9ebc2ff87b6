"""Hiera masked autoencoder (Ryali et al., "Hiera: A Hierarchical Vision Transformer without the Bells-and-
Whistles", 2023) on timm's Hiera, and the Hiera classifier.

Geometry (224 px): 4-px tokens (56 x 56), mask units of 8 x 8 tokens = 32 px (L = 7 x 7 = 49). As in the paper's
MAE, pretraining pools queries twice (q_pool=2) so the last stage is at stride 16, and each mask unit holds
2 x 2 prediction patches of 16 px; the classifier pools three times (q_pool=3, timm's default). q_pool moves no
parameter, so the encoder weights are the same in both.

Mask convention: our `mask` is MAE's, [N, L] with 1 = masked. timm's Hiera takes the opposite (a bool `keep`
[N, L], True = visible): `forward_encoder` passes `mask == 0`. Masked pixels are zeroed before the patch
convolution, and masked units' tokens are dropped before the first block, so the encoder sees visible units only.

Decoder: the last feature of every stage (visible units only, [N, K, m, m, C_s]) is brought to the last
stage's 2 x 2 tokens per unit by a strided convolution (kernel = stride = m / 2) and to its width, and the
stages are summed (multi-scale fusion); then LayerNorm, a linear embedding, mask tokens at masked units, fixed
2-D sin-cos position embeddings, `decoder_depth` transformer blocks and a linear prediction of 16 x 16 x C pixels.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.hiera import Hiera, MaskUnitAttention
from timm.models.vision_transformer import Block

from mae.errors import ConfigError
from mae.models.archs import ArchSpec
from mae.models.base import (
    COMMON_MAE_OVERRIDES,
    MaskedAutoencoder,
    Masking,
    ModelFamily,
    check_overrides,
    init_small_head_,
    init_vit_style_,
    mae_kwargs,
    sincos_2d,
)

ENCODER_OVERRIDES = ("embed_dim", "num_heads", "stages")
MAE_OVERRIDES = COMMON_MAE_OVERRIDES + ENCODER_OVERRIDES + ("decoder_num_heads",)
CLASSIFIER_OVERRIDES = ENCODER_OVERRIDES
PATCH_STRIDE = 4  # pixels per token
MASK_UNIT_TOKENS = 8  # tokens per mask-unit side (32 px)
Q_STRIDE = 2  # query pooling halves each side
MAE_Q_POOL = 2  # pretraining: stride-16 last stage, as in the paper's MAE


class FlashMaskUnitAttention(MaskUnitAttention):
    """timm's mask-unit attention with its windows folded into the batch before attention.

    timm hands scaled_dot_product_attention 5-D tensors [N, heads, windows, tokens, head_dim]; the flash and
    memory-efficient kernels take 4-D inputs only, so every windowed block fell back to the math kernel
    (measured with `torch.nn.attention.sdpa_kernel`). Here heads x windows is one batch dimension
    [N, heads * windows, tokens, head_dim]: the same attention (each window attends within itself), a kernel
    that scales. Same parameters, same outputs (tests/test_engine_speed.py); global-attention blocks and the
    explicit path (`fused_attn` off, e.g. while exporting to ONNX) are timm's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.use_mask_unit_attn and self.fused_attn):
            return super().forward(x)
        n, t, _ = x.shape
        windows = t // (self.q_stride * self.window_size)
        qkv = self.qkv(x).reshape(n, -1, windows, 3, self.heads, self.head_dim).permute(3, 0, 4, 2, 1, 5)
        q, k, v = qkv.unbind(0)  # each [N, heads, windows, tokens, head_dim]
        if self.q_stride > 1:  # query pooling: max over the q_stride strided sub-grids of each window
            q = q.view(n, self.heads, windows, self.q_stride, -1, self.head_dim).amax(dim=3)
        q, k, v = (z.reshape(n, self.heads * windows, -1, self.head_dim) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v)  # [N, heads * windows, tokens_out, head_dim]
        y = y.view(n, self.heads, windows, -1, self.head_dim).transpose(1, 3).reshape(n, -1, self.dim_out)
        return self.proj(y)


def use_flash_mask_unit_attention(blocks: nn.ModuleList) -> None:
    """Give every mask-unit attention of `blocks` the 4-D attention path (`FlashMaskUnitAttention`)."""
    for blk in blocks:
        if type(blk.attn) is MaskUnitAttention:
            blk.attn.__class__ = FlashMaskUnitAttention


def onnx_safe_attention(blocks: nn.ModuleList, fused: list[bool]) -> None:
    """Mask-unit attention calls scaled_dot_product_attention on 5-D tensors, which ONNX export cannot
    translate: while exporting, those blocks use timm's explicit softmax(q k^T) v path (same result)."""
    exporting = torch.onnx.is_in_onnx_export()
    for blk, default in zip(blocks, fused, strict=True):
        if blk.attn.use_mask_unit_attn:
            blk.attn.fused_attn = default and not exporting


class HieraMAE(MaskedAutoencoder):
    """MAE with a Hiera encoder over visible mask units and a decoder over fused multi-scale features."""

    family = "hiera"
    encoder_prefixes = ("patch_embed.", "pos_embed", "blocks.")

    def __init__(
        self,
        *,
        arch: str = "hiera",
        img_size: int = 224,
        in_chans: int = 3,
        embed_dim: int = 96,
        num_heads: int = 1,
        stages: tuple = (1, 2, 7, 2),
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ):
        pooled = Q_STRIDE**MAE_Q_POOL
        super().__init__(
            arch=arch,
            img_size=img_size,
            patch_size=PATCH_STRIDE * pooled,  # 16 px prediction patches
            unit_patches=MASK_UNIT_TOKENS // pooled,  # 2 x 2 of them per mask unit
            in_chans=in_chans,
            mask_ratio=mask_ratio,
            norm_pix_loss=norm_pix_loss,
        )
        net = Hiera(
            img_size=(img_size, img_size),
            in_chans=in_chans,
            embed_dim=embed_dim,
            num_heads=num_heads,
            stages=tuple(stages),
            q_pool=MAE_Q_POOL,
            num_classes=0,
        )
        # Encoder: timm's modules under timm's names (the classifier's names).
        self.patch_embed = net.patch_embed
        self.pos_embed = net.pos_embed  # [1, T, C0] learned, T tokens in row-major order
        self.unroll = net.unroll
        self.reroll = net.reroll
        self.blocks = net.blocks
        use_flash_mask_unit_attention(self.blocks)
        self._fused_attn = [blk.attn.fused_attn for blk in self.blocks]
        self.stage_ends = list(net.stage_ends)
        self.tokens_per_unit = net.mu_size  # 64
        dims = [info["num_chs"] for info in net.feature_info]  # width at each stage end
        self.num_features = dims[-1]

        # Decoder: multi-scale fusion, then a ViT decoder on the 16-px grid.
        u = self.unit_patches
        unit_sides = [
            MASK_UNIT_TOKENS // Q_STRIDE ** min(s, MAE_Q_POOL) for s in range(len(dims))
        ]  # 8, 4, 2, 2
        self.decoder_fusion = nn.ModuleList(
            [
                nn.Identity()
                if side == u and dim == dims[-1]
                else nn.Conv2d(dim, dims[-1], kernel_size=side // u, stride=side // u)
                for side, dim in zip(unit_sides, dims, strict=True)
            ]
        )
        self.decoder_fusion_norm = nn.LayerNorm(dims[-1])
        self.decoder_embed = nn.Linear(dims[-1], decoder_embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, self.num_patches, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, 4.0, qkv_bias=True, norm_layer=nn.LayerNorm)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = nn.LayerNorm(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, self.patch_size**2 * in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        with torch.no_grad():
            self.decoder_pos_embed.copy_(sincos_2d(self.decoder_pos_embed.shape[-1], self.grid_size)[None])
        for fuse in self.decoder_fusion:
            if isinstance(fuse, nn.Conv2d):
                nn.init.xavier_uniform_(fuse.weight.view(fuse.weight.shape[0], -1))
                nn.init.zeros_(fuse.bias)
        nn.init.normal_(self.mask_token, std=0.02)
        for part in (self.decoder_fusion_norm, self.decoder_embed, self.decoder_blocks, self.decoder_norm):
            part.apply(init_vit_style_)
        self.decoder_pred.apply(init_vit_style_)

    # ---------------------------------------------------------------------------------------- encoder
    def encode(
        self, imgs: torch.Tensor, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """imgs [N, C, H, W], keep [N, L] bool (True = visible) or None -> (last tokens, stage-end tokens)."""
        onnx_safe_attention(self.blocks, self._fused_attn)
        n = imgs.shape[0]
        unit_mask = None if keep is None else keep.reshape(n, 1, *self.mask_grid)  # [N, 1, Lh, Lw]
        x = self.patch_embed(imgs, mask=unit_mask)  # [N, T, C0]; masked pixels zeroed before the conv
        x = x + self.pos_embed
        x = self.unroll(x)  # [N, T, C0] reordered: token t belongs to mask unit t % L
        if keep is not None:
            x = x[keep.repeat(1, self.tokens_per_unit)].reshape(n, -1, x.shape[-1])  # [N, K*64, C0]
        stage_feats = []  # masked: [N, K, m_s, m_s, C_s] per visible unit; unmasked: [N, h_s, w_s, C_s]
        for i, blk in enumerate(self.blocks):
            x = blk(x)
            if i in self.stage_ends:
                stage_feats.append(self.reroll(x, i, mask=keep))
        return x, stage_feats

    def forward_encoder(self, imgs: torch.Tensor, masking: Masking) -> list[torch.Tensor]:
        """imgs [N, C, H, W] -> per stage [N, K, m_s, m_s, C_s], visible units in increasing unit order."""
        keep = masking.mask == 0  # Hiera's convention: True = keep
        return self.encode(imgs, keep)[1]

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs -> [N, D]: mean of the last stage's tokens of the whole image."""
        return self.encode(imgs, None)[0].mean(dim=1)

    # ---------------------------------------------------------------------------------------- decoder
    def units_to_grid(self, x: torch.Tensor) -> torch.Tensor:
        """[N, L, u, u, C] per mask unit -> [N, Lh*u, Lw*u, C] in image layout."""
        n, _, u, _, c = x.shape
        lh, lw = self.mask_grid
        x = x.reshape(n, lh, lw, u, u, c).permute(0, 1, 3, 2, 4, 5)  # [N, Lh, u, Lw, u, C]
        return x.reshape(n, lh * u, lw * u, c)

    def fuse(self, stage_feats: list[torch.Tensor]) -> torch.Tensor:
        """Per stage [N, K, m_s, m_s, C_s] -> [N, K, u*u, C] summed at the last stage's resolution and width."""
        n, k = stage_feats[0].shape[:2]
        fused = 0
        for fuse, f in zip(self.decoder_fusion, stage_feats, strict=True):
            m, c = f.shape[2], f.shape[-1]
            f = f.reshape(n * k, m, m, c).permute(0, 3, 1, 2)  # [N*K, C_s, m, m]
            fused = fused + fuse(f)  # [N*K, C, u, u]
        return fused.permute(0, 2, 3, 1).reshape(n, k, -1, fused.shape[1])  # [N, K, u*u, C]

    def forward_decoder(self, stage_feats: list[torch.Tensor], masking: Masking) -> torch.Tensor:
        """Per-stage features of the visible units -> pred [N, P, 16*16*C]."""
        x = self.fuse(stage_feats)  # [N, K, u*u, C]
        x = self.decoder_embed(self.decoder_fusion_norm(x))  # [N, K, u*u, Dd]
        n, _, uu, dd = x.shape
        num_units = masking.mask.shape[1]  # L
        ids_visible = masking.ids_keep.sort(dim=1).values  # [N, K] the order in which timm keeps them
        token = self.mask_token.to(x.dtype).reshape(1, 1, 1, dd)  # autocast may have made x 16-bit
        full = token.expand(n, num_units, uu, dd)  # [N, L, u*u, Dd]
        full = full.scatter(1, ids_visible[:, :, None, None].expand(-1, -1, uu, dd), x)
        u = self.unit_patches
        x = self.units_to_grid(full.reshape(n, num_units, u, u, dd)).reshape(n, -1, dd)  # [N, P, Dd]
        x = x + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        return self.decoder_pred(x)  # [N, P, p*p*C]


class HieraClassifier(Hiera):
    """timm's Hiera with `forward_features` returning pooled, normed features [N, D]."""

    family = "hiera"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        use_flash_mask_unit_attention(self.blocks)
        self._fused_attn = [blk.attn.fused_attn for blk in self.blocks]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, D]
        onnx_safe_attention(self.blocks, self._fused_attn)
        tokens = super().forward_features(x)  # [N, T, D]
        return self.forward_head(tokens, pre_logits=True)  # avg pool -> head.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, num_classes]
        return self.head.fc(self.forward_features(x))


def _settings(spec: ArchSpec, overrides: dict) -> dict:
    s = dict(spec.settings)
    s.update({k: v for k, v in overrides.items() if k in ENCODER_OVERRIDES})
    s["stages"] = tuple(s["stages"])
    return s


def build_mae(arch: str, spec: ArchSpec, overrides: dict) -> HieraMAE:
    check_overrides(arch, overrides, MAE_OVERRIDES)
    return HieraMAE(**mae_kwargs(arch, spec, overrides), **_settings(spec, overrides))


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
) -> HieraClassifier:
    check_overrides(arch, overrides, CLASSIFIER_OVERRIDES)
    if not global_pool:
        raise ConfigError(
            f"model.global_pool: false needs a class token, which {arch} does not have; "
            "Hiera always average-pools (set model.global_pool: true)"
        )
    unit_px = PATCH_STRIDE * MASK_UNIT_TOKENS
    if img_size % unit_px:
        raise ConfigError(
            f"dataset.augmentation.input_size: {img_size} is not a multiple of {unit_px}, "
            f"the mask-unit size of {arch}"
        )
    model = HieraClassifier(
        img_size=(img_size, img_size),
        in_chans=in_chans,
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        **_settings(spec, overrides),
    )
    init_small_head_(model.head.fc)
    return model


def layer_id(name: str, model: nn.Module) -> int:
    """0 for patch/position embeddings, i + 1 for blocks.i, len(blocks) + 1 for the rest (head, decoder)."""
    if name.startswith(("patch_embed.", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_layers(model)


def num_layers(model: nn.Module) -> int:
    return len(model.blocks) + 1


def normalize_state_dict(state_dict: dict) -> dict:
    """The official Hiera layout -> timm's: `norm` -> `head.norm`, `head.projection` -> `head.fc`,
    `pos_embed_abs` -> `pos_embed`. The official MAE's `encoder_norm` and `multi_scale_fusion_heads` belong to
    its decoder (see FAMILY.extra_decoder_prefixes)."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("head.projection."):
            k = "head.fc." + k[len("head.projection.") :]
        elif k.startswith("norm."):
            k = "head.norm." + k[len("norm.") :]
        elif k == "pos_embed_abs":
            k = "pos_embed"
        out[k] = v
    return out


FAMILY = ModelFamily(
    name="hiera",
    build_mae=build_mae,
    build_classifier=build_classifier,
    layer_id=layer_id,
    num_layers=num_layers,
    normalize_state_dict=normalize_state_dict,
    head_prefix="head.fc.",
    pos_embeds={"pos_embed": 0, "decoder_pos_embed": 0},
    extra_decoder_prefixes=("multi_scale_fusion_heads.", "encoder_norm."),
)

"""ConvNeXt V2 fully convolutional masked autoencoder (FCMAE; Woo et al., "ConvNeXt V2", 2023) and classifier.

Masking works on 32-px units (the encoder's total stride, so at 224 px L = 7 x 7 = 49). The paper's encoder
uses sparse convolutions; this one is the dense equivalent it describes: the binary mask is re-applied after
the stem, after every depthwise convolution, after every downsampling layer and after every block, so a masked
position holds exactly zero and contributes nothing to its visible neighbours. The GRN statistics are taken
with masked positions zeroed, i.e. over the visible positions only, as with sparse tensors. The decoder is
`decoder_depth` ConvNeXt V2 blocks (the paper uses one) of width `decoder_embed_dim` on the 1/32 grid, with a
learned mask token at masked positions, and a 1x1 convolution predicting the 32 x 32 x C pixels of each unit.

The encoder modules are timm's ConvNeXt modules under timm's names (`stem.*`, `stages.S.downsample.*`,
`stages.S.blocks.B.*`), so the classifier (timm ConvNeXt with GRN, no layer scale) takes the encoder weights
as they are; only its head (`head.norm`, `head.fc`) is new.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from timm.models.convnext import ConvNeXt, ConvNeXtBlock

from mae.errors import ConfigError
from mae.models.archs import ArchSpec
from mae.models.base import (
    COMMON_MAE_OVERRIDES,
    MaskedAutoencoder,
    Masking,
    ModelFamily,
    check_overrides,
    init_small_head_,
    mae_kwargs,
)

ENCODER_OVERRIDES = ("depths", "dims")
MAE_OVERRIDES = COMMON_MAE_OVERRIDES + ENCODER_OVERRIDES
CLASSIFIER_OVERRIDES = ENCODER_OVERRIDES
TOTAL_STRIDE = 32  # stem 4 x three 2x downsamplings: one mask unit = one position of the last stage


def _convnextv2_kwargs(depths: tuple, dims: tuple) -> dict:
    """timm ConvNeXt settings of ConvNeXt V2: GRN in the MLP, no layer scale, channels-last Linear MLP."""
    if len(depths) != 4 or len(dims) != 4:
        raise ConfigError(f"ConvNeXt V2 needs 4 stages, got depths={depths} dims={dims}")
    return dict(depths=tuple(depths), dims=tuple(dims), use_grn=True, ls_init_value=None, conv_mlp=False)


def _init_conv_linear_(module: nn.Module) -> None:
    """timm ConvNeXt's init: trunc-normal(0.02) weights, zero biases."""
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class FCMAE(MaskedAutoencoder):
    """Fully convolutional MAE on a ConvNeXt V2 encoder (the paper masks 60%; our spec default is 75%)."""

    family = "convnextv2"
    encoder_prefixes = ("stem.", "stages.")

    def __init__(
        self,
        *,
        arch: str = "convnextv2",
        img_size: int = 224,
        in_chans: int = 3,
        depths: tuple = (3, 3, 9, 3),
        dims: tuple = (96, 192, 384, 768),
        decoder_embed_dim: int = 512,
        decoder_depth: int = 1,
        mask_ratio: float = 0.75,
        norm_pix_loss: bool = True,
    ):
        super().__init__(
            arch=arch,
            img_size=img_size,
            patch_size=TOTAL_STRIDE,
            unit_patches=1,
            in_chans=in_chans,
            mask_ratio=mask_ratio,
            norm_pix_loss=norm_pix_loss,
        )
        # Encoder: timm's stem and stages (the classifier's own modules), without its head.
        net = ConvNeXt(in_chans=in_chans, num_classes=0, **_convnextv2_kwargs(depths, dims))
        self.stem = net.stem
        self.stages = net.stages
        self.num_features = dims[-1]

        # Decoder
        self.decoder_embed = nn.Conv2d(dims[-1], decoder_embed_dim, kernel_size=1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_embed_dim, 1, 1))
        self.decoder_blocks = nn.Sequential(
            *[
                ConvNeXtBlock(decoder_embed_dim, use_grn=True, ls_init_value=None, conv_mlp=False)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_pred = nn.Conv2d(
            decoder_embed_dim, TOTAL_STRIDE * TOTAL_STRIDE * in_chans, kernel_size=1
        )
        self.decoder_embed.apply(_init_conv_linear_)
        self.decoder_blocks.apply(_init_conv_linear_)
        self.decoder_pred.apply(_init_conv_linear_)
        nn.init.normal_(self.mask_token, std=0.02)

    # ---------------------------------------------------------------------------------------- encoder
    def visible_map(self, mask: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """mask [N, L] (1 = masked) -> [N, 1, h, w] visibility (1 = visible) at a feature resolution h x w."""
        n = mask.shape[0]
        vis = 1.0 - mask.reshape(n, 1, *self.mask_grid)  # [N, 1, Lh, Lw]
        scale = size[0] // self.mask_grid[0]
        return vis.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)

    def masked_block(self, blk: ConvNeXtBlock, x: torch.Tensor, vis: torch.Tensor | None) -> torch.Tensor:
        """One ConvNeXt V2 block on x [N, C, h, w] whose masked positions are 0; they stay 0."""
        shortcut = x
        x = blk.conv_dw(x)  # [N, C, h, w] depthwise 7x7
        if vis is not None:
            x = x * vis  # no masked position takes values from its visible neighbours
        x = x.permute(0, 2, 3, 1)  # [N, h, w, C]
        x = blk.norm(x)
        mlp = blk.mlp
        x = mlp.drop1(mlp.act(mlp.fc1(x)))  # [N, h, w, 4C]
        if vis is not None:
            x = x * vis.permute(0, 2, 3, 1)  # GRN's spatial L2 norm then runs over visible positions only
        x = mlp.drop2(mlp.fc2(mlp.grn(x)))  # [N, h, w, C]
        x = x.permute(0, 3, 1, 2)  # [N, C, h, w]
        if blk.gamma is not None:
            x = x * blk.gamma.reshape(1, -1, 1, 1)
        x = blk.drop_path(x) + blk.shortcut(shortcut)
        return x if vis is None else x * vis

    def encode(self, imgs: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """imgs [N, C, H, W] -> [N, D, H/32, W/32]; with a mask [N, L] masked positions are 0 throughout."""
        x = self.stem(imgs)  # [N, C0, H/4, W/4]
        vis = None if mask is None else self.visible_map(mask, x.shape[-2:])
        if vis is not None:
            x = x * vis
        for stage in self.stages:
            x = stage.downsample(x)  # LayerNorm + 2x2 stride-2 conv (identity in stage 0)
            if mask is not None:
                vis = self.visible_map(mask, x.shape[-2:])
                x = x * vis
            for blk in stage.blocks:
                x = self.masked_block(blk, x, vis)
        return x

    def forward_encoder(self, imgs: torch.Tensor, masking: Masking) -> torch.Tensor:
        """imgs [N, C, H, W] -> latent [N, D, Lh, Lw], zero at masked units."""
        return self.encode(imgs, masking.mask)

    # ---------------------------------------------------------------------------------------- decoder
    def forward_decoder(self, latent: torch.Tensor, masking: Masking) -> torch.Tensor:
        """latent [N, D, Lh, Lw] -> pred [N, L, 32*32*C]."""
        x = self.decoder_embed(latent)  # [N, Dd, Lh, Lw]
        m = masking.mask.reshape(x.shape[0], 1, *self.mask_grid).to(x.dtype)  # [N, 1, Lh, Lw]
        x = x * (1.0 - m) + self.mask_token * m  # mask token at masked units
        x = self.decoder_blocks(x)
        x = self.decoder_pred(x)  # [N, p*p*C, Lh, Lw]
        return x.flatten(2).transpose(1, 2)  # [N, L, p*p*C]

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs -> [N, D]: global average of the unmasked encoder's last feature map."""
        return self.encode(imgs, None).mean(dim=(2, 3))


class ConvNeXtV2Classifier(ConvNeXt):
    """timm's ConvNeXt (V2 settings) with `forward_features` returning pooled, normed features [N, D]."""

    family = "convnextv2"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, D]
        fmap = super().forward_features(x)  # [N, D, h, w]
        return self.forward_head(fmap, pre_logits=True)  # avg pool -> head.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [N, C, H, W] -> [N, num_classes]
        return self.head.fc(self.forward_features(x))


def _settings(spec: ArchSpec, overrides: dict) -> dict:
    return dict(
        depths=tuple(overrides.get("depths", spec.settings["depths"])),
        dims=tuple(overrides.get("dims", spec.settings["dims"])),
    )


def build_mae(arch: str, spec: ArchSpec, overrides: dict) -> FCMAE:
    check_overrides(arch, overrides, MAE_OVERRIDES)
    return FCMAE(**mae_kwargs(arch, spec, overrides, attention=False), **_settings(spec, overrides))


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
) -> ConvNeXtV2Classifier:
    check_overrides(arch, overrides, CLASSIFIER_OVERRIDES)
    if not global_pool:
        raise ConfigError(
            f"model.global_pool: false needs a class token, which {arch} does not have; "
            "ConvNeXt V2 always average-pools (set model.global_pool: true)"
        )
    if img_size % TOTAL_STRIDE:
        raise ConfigError(
            f"dataset.augmentation.input_size: {img_size} is not a multiple of {TOTAL_STRIDE}, "
            f"the total stride of {arch}"
        )
    s = _settings(spec, overrides)
    model = ConvNeXtV2Classifier(
        in_chans=in_chans,
        num_classes=num_classes,
        drop_path_rate=drop_path_rate,
        **_convnextv2_kwargs(s["depths"], s["dims"]),
    )
    init_small_head_(model.head.fc)
    return model


# ------------------------------------------------------------------------------- layer-wise lr decay
def _stage2_groups(model: nn.Module) -> tuple[int, int]:
    """(blocks per group, number of groups) for the deep third stage, split in at most 9 groups."""
    depth = len(model.stages[2].blocks)
    per_group = math.ceil(depth / 9)
    return per_group, math.ceil(depth / per_group)


def layer_id(name: str, model: nn.Module) -> int:
    """stem 0; stage 0 -> 1; stage 1 -> 2; stage 2 in <= 9 groups of consecutive blocks; stage 3; then the rest.

    With (3, 3, 27, 3) blocks that is 13 layers (stem, 1, 1, 9 groups of 3, 1, head), close to the
    ConvNeXt V2 recipe's 12 groups; a layer per block would give 0.75^37 ~ 2e-5 at the stem.
    """
    if name.startswith("stem."):
        return 0
    if name.startswith("stages."):
        parts = name.split(".")
        stage = int(parts[1])
        per_group, groups = _stage2_groups(model)
        if stage < 2:
            return stage + 1
        if stage == 2:
            if parts[2] == "blocks":
                return 3 + int(parts[3]) // per_group
            return 3  # the downsampling into stage 2 goes with its first group
        return 3 + groups + (stage - 3)
    return num_layers(model)


def num_layers(model: nn.Module) -> int:
    return 3 + _stage2_groups(model)[1] + 1


# ------------------------------------------------------------------------------ checkpoint remapping
def _minkowski_kernel_to_conv(v: torch.Tensor) -> torch.Tensor:
    """MinkowskiEngine kernels -> Conv2d weights. [k*k, C] depthwise -> [C, 1, k, k];
    [k*k, Cin, Cout] -> [Cout, Cin, k, k]. The kernel offset index runs over x (width) first."""
    k = math.isqrt(v.shape[0])
    if v.dim() == 2:
        return v.permute(1, 0).reshape(v.shape[1], 1, k, k).transpose(2, 3)
    return v.permute(2, 1, 0).reshape(v.shape[2], v.shape[1], k, k).transpose(2, 3)


def _official_block_key(rest: str) -> str:
    """Official ConvNeXt V2 block names (dwconv, pwconv1/2, grn.gamma/beta, norm) -> timm's."""
    rest = rest.replace("dwconv.", "conv_dw.").replace("pwconv1.", "mlp.fc1.").replace("pwconv2.", "mlp.fc2.")
    return rest.replace("grn.gamma", "mlp.grn.weight").replace("grn.beta", "mlp.grn.bias")


def normalize_state_dict(state_dict: dict) -> dict:
    """Official ConvNeXt V2 checkpoints -> our (timm) names; timm-format ones pass through.

    Handles the official finetuned layout (`downsample_layers.S.*`, `stages.S.B.dwconv`, `norm`, `head`) and
    the FCMAE pretraining layout (`encoder.*` with MinkowskiEngine sparse layers: `*.kernel`, `.ln.`,
    `.linear.`; `proj`, `decoder.B.*`, `pred`, `mask_token`). GRN and bias shapes are left to the loader,
    which reshapes tensors that differ only by singleton dimensions.
    """
    if not any(
        k.startswith(("encoder.", "downsample_layers.", "proj.", "pred.")) for k in state_dict
    ) and not any(".dwconv." in k for k in state_dict):
        return dict(state_dict)
    out = {}
    for key, v in state_dict.items():
        k = key[len("encoder.") :] if key.startswith("encoder.") else key
        if k.endswith(".kernel"):  # sparse (Minkowski) convolution
            k = k[: -len("kernel")] + "weight"
            v = _minkowski_kernel_to_conv(v)
        k = k.replace(".ln.", ".").replace(".linear.", ".")
        parts = k.split(".")
        if parts[0] == "downsample_layers":
            stage, rest = int(parts[1]), ".".join(parts[2:])
            k = f"stem.{rest}" if stage == 0 else f"stages.{stage}.downsample.{rest}"
        elif parts[0] == "stages" and parts[2].isdigit():
            k = f"stages.{parts[1]}.blocks.{parts[2]}." + _official_block_key(".".join(parts[3:]))
        elif parts[0] == "decoder" and parts[1].isdigit():
            k = f"decoder_blocks.{parts[1]}." + _official_block_key(".".join(parts[2:]))
        elif parts[0] == "proj":
            k = "decoder_embed." + ".".join(parts[1:])
        elif parts[0] == "pred":
            k = "decoder_pred." + ".".join(parts[1:])
        elif parts[0] == "norm":
            k = "head.norm." + ".".join(parts[1:])
        elif parts[0] == "head" and parts[1] in ("weight", "bias"):
            k = "head.fc." + parts[1]
        out[k] = v
    return out


FAMILY = ModelFamily(
    name="convnextv2",
    build_mae=build_mae,
    build_classifier=build_classifier,
    layer_id=layer_id,
    num_layers=num_layers,
    normalize_state_dict=normalize_state_dict,
    head_prefix="head.fc.",
)

"""What the three MAE families share: masking, patchify, the loss, fixed 2-D sin-cos position embeddings.

Every family's masked autoencoder subclasses `MaskedAutoencoder`, which fixes the call contract

    loss, pred, mask = model(imgs, mask_ratio=None, noise=None)

    imgs:  [N, C, H, W]
    noise: [N, L] optional; per sample, the L - K mask units with the *largest* noise are masked (as in MAE)
    mask:  [N, L] float, 0 keep, 1 remove (L = `num_mask_units`)
    pred:  [N, P, p*p*C] pixels of every prediction patch (P = `num_patches`, p = `patch_size`), in the
           `patchify` layout, so `unpatchify(pred)` is an image
    loss:  mean over masked patches of the per-patch mean squared error (against normalised patches when
           `norm_pix_loss`)

A mask unit covers `unit_patches` x `unit_patches` prediction patches: 1 for the ViT MAE and FCMAE (a mask
unit is one patch), 2 for the Hiera MAE (32-px mask units, 16-px prediction patches at 224 px).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn

from mae.errors import ConfigError, did_you_mean


class Masking(NamedTuple):
    """One random masking of a batch. K visible mask units out of L per sample."""

    ids_keep: torch.Tensor  # [N, K] indices of the visible units, in increasing noise order
    ids_restore: torch.Tensor  # [N, L] position of each unit in the (visible, masked) shuffled order
    mask: torch.Tensor  # [N, L] 0 keep, 1 remove


def num_visible(num_units: int, mask_ratio: float) -> int:
    """K, the number of visible mask units: int(L * (1 - mask_ratio)) as in the MAE paper's code."""
    return int(num_units * (1 - mask_ratio))


def check_mask_ratio(mask_ratio: float, num_units: int, where: str) -> None:
    """A ConfigError unless 0 <= mask_ratio < 1 leaves at least one visible mask unit."""
    if not 0.0 <= mask_ratio < 1.0:
        raise ConfigError(f"train.mask_ratio: must be in [0, 1), got {mask_ratio}")
    if num_visible(num_units, mask_ratio) < 1:
        raise ConfigError(
            f"train.mask_ratio: {mask_ratio} leaves no visible mask unit out of {num_units} for {where}; "
            "lower train.mask_ratio or raise dataset.augmentation.input_size"
        )


def sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M] positions -> [M, dim]: [sin(pos * w_0..w_{dim/2-1}), cos(pos * w_0..)] with w_d = 10000^(-2d/dim)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding width must be even, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))  # [dim/2]
    out = pos.to(torch.float64)[:, None] * omega[None, :]  # [M, dim/2]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_2d(dim: int, grid: tuple[int, int], cls_token: bool = False) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, [(1 if cls_token) + gh * gw, dim] in float32.

    Token k = row * gw + col (row-major, as `patchify`). The first dim/2 channels encode the column, the
    last dim/2 the row, each as `sincos_1d`: the layout of the MAE paper's code, so its checkpoints' fixed
    embeddings equal ours. The class token's row is all zeros.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos embedding width must be a multiple of 4, got {dim}")
    gh, gw = grid
    rows = torch.arange(gh).repeat_interleave(gw)  # [gh*gw] row of token k
    cols = torch.arange(gw).repeat(gh)  # [gh*gw] column of token k
    emb = torch.cat([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], dim=1)  # [gh*gw, dim]
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


def init_vit_style_(module: nn.Module) -> None:
    """The MAE paper code's init for transformer parts: xavier-uniform Linear, zero bias, unit LayerNorm."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_small_head_(linear: nn.Module) -> None:
    """Classifier head init of MAE / ConvNeXt V2 / Hiera finetuning: trunc-normal std 2e-5, zero bias."""
    if isinstance(linear, nn.Linear):
        nn.init.trunc_normal_(linear.weight, std=2e-5)
        nn.init.zeros_(linear.bias)


class MaskedAutoencoder(nn.Module):
    """Base class: the masking, patch layout and loss shared by the ViT, FCMAE and Hiera MAEs.

    Subclasses set `family` and `encoder_prefixes` and implement `forward_encoder`, `forward_decoder` and
    `forward_features`.
    """

    family: str = ""
    # State-dict keys that start with one of these belong to the encoder (what a classifier takes).
    encoder_prefixes: tuple[str, ...] = ()

    def __init__(
        self,
        *,
        arch: str,
        img_size: int,
        patch_size: int,
        unit_patches: int,
        in_chans: int,
        mask_ratio: float,
        norm_pix_loss: bool,
    ):
        super().__init__()
        unit_px = patch_size * unit_patches
        if img_size % unit_px:
            raise ConfigError(
                f"dataset.augmentation.input_size: {img_size} is not a multiple of {unit_px}, "
                f"the mask-unit size of {arch}"
            )
        self.arch = arch
        self.img_size = img_size
        self.patch_size = patch_size  # side in pixels of one prediction patch
        self.unit_patches = unit_patches  # a mask unit is unit_patches x unit_patches prediction patches
        self.in_chans = in_chans
        self.grid_size = (img_size // patch_size, img_size // patch_size)  # prediction patches (h, w)
        self.mask_grid = (img_size // unit_px, img_size // unit_px)  # mask units (h, w)
        self.num_patches = self.grid_size[0] * self.grid_size[1]  # P
        self.num_mask_units = self.mask_grid[0] * self.mask_grid[1]  # L
        check_mask_ratio(mask_ratio, self.num_mask_units, f"{arch} at {img_size} px")
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss

    # ----------------------------------------------------------------------------------------- layout
    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """imgs [N, C, H, W] -> [N, P, p*p*C]; patches row-major, pixels inside a patch as (row, col, chan)."""
        n, c, h, w = imgs.shape
        p = self.patch_size
        x = imgs.reshape(n, c, h // p, p, w // p, p)  # [N, C, h, p, w, p]
        x = torch.einsum("nchpwq->nhwpqc", x)  # [N, h, w, p, p, C]
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, P, p*p*C] -> imgs [N, C, H, W]; the inverse of `patchify`."""
        n = x.shape[0]
        p = self.patch_size
        h, w = self.grid_size
        c = x.shape[-1] // (p * p)
        x = x.reshape(n, h, w, p, p, c)  # [N, h, w, p, p, C]
        x = torch.einsum("nhwpqc->nchpwq", x)  # [N, C, h, p, w, p]
        return x.reshape(n, c, h * p, w * p)

    def patch_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """mask [N, L] over mask units -> [N, P] over prediction patches (1 = masked)."""
        u = self.unit_patches
        if u == 1:
            return mask
        n = mask.shape[0]
        m = mask.reshape(n, *self.mask_grid)  # [N, Lh, Lw]
        m = m.repeat_interleave(u, dim=1).repeat_interleave(u, dim=2)  # [N, h, w]
        return m.reshape(n, self.num_patches)

    def mask_to_pixels(self, mask: torch.Tensor) -> torch.Tensor:
        """mask [N, L] -> [N, 1, H, W] with 1 on masked pixels (for reconstruction images)."""
        n = mask.shape[0]
        m = mask.reshape(n, 1, *self.mask_grid)  # [N, 1, Lh, Lw]
        unit_px = self.patch_size * self.unit_patches
        return m.repeat_interleave(unit_px, dim=2).repeat_interleave(unit_px, dim=3)

    # ---------------------------------------------------------------------------------------- masking
    def random_masking(
        self, n: int, mask_ratio: float, noise: torch.Tensor | None, device: torch.device
    ) -> Masking:
        """Per-sample random masking by argsort of uniform noise: the K units with the smallest noise stay."""
        num_units = self.num_mask_units  # L
        check_mask_ratio(mask_ratio, num_units, f"{self.arch} at {self.img_size} px")
        len_keep = num_visible(num_units, mask_ratio)  # K
        if noise is None:
            noise = torch.rand(n, num_units, device=device)  # [N, L] in [0, 1)
        elif tuple(noise.shape) != (n, num_units):
            raise ValueError(f"noise must have shape [N, L] = [{n}, {num_units}], got {list(noise.shape)}")
        ids_shuffle = torch.argsort(noise, dim=1)  # [N, L] ascending: small noise is kept
        ids_restore = torch.argsort(ids_shuffle, dim=1)  # [N, L]
        ids_keep = ids_shuffle[:, :len_keep]  # [N, K]
        mask = torch.ones(n, num_units, device=device)  # [N, L]
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, dim=1, index=ids_restore)  # [N, L] back to unit order, 0 keep, 1 remove
        return Masking(ids_keep, ids_restore, mask)

    # ------------------------------------------------------------------------------------------- loss
    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over masked patches of the per-patch MSE; float32 whatever the autocast dtype.

        imgs [N, C, H, W], pred [N, P, p*p*C], mask [N, L] (1 = masked). With `norm_pix_loss` each target
        patch is normalised by its own mean and unbiased variance: (x - mean) / sqrt(var + 1e-6).
        """
        target = self.patchify(imgs).float()  # [N, P, p*p*C]
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)  # unbiased
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = (pred.float() - target) ** 2
        loss = loss.mean(dim=-1)  # [N, P] mean loss per patch
        pmask = self.patch_mask(mask).to(loss.dtype)  # [N, P]
        # Nothing masked (mask_ratio 0) has no masked patch to average over: the loss is 0, not NaN.
        return (loss * pmask).sum() / pmask.sum().clamp_min(1.0)

    # ---------------------------------------------------------------------------------------- forward
    def forward_encoder(self, imgs: torch.Tensor, masking: Masking) -> torch.Tensor:
        raise NotImplementedError

    def forward_decoder(self, latent: torch.Tensor, masking: Masking) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Pooled encoder features [N, D] of the whole, unmasked image (for kNN monitoring)."""
        raise NotImplementedError

    def forward(
        self, imgs: torch.Tensor, mask_ratio: float | None = None, noise: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """imgs [N, C, H, W] -> (loss [], pred [N, P, p*p*C], mask [N, L])."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        masking = self.random_masking(imgs.shape[0], ratio, noise, imgs.device)
        latent = self.forward_encoder(imgs, masking)
        pred = self.forward_decoder(latent, masking)  # [N, P, p*p*C]
        loss = self.forward_loss(imgs, pred, masking.mask)
        return loss, pred, masking.mask

    # -------------------------------------------------------------------------------------- weights
    def is_encoder_key(self, key: str) -> bool:
        return key.startswith(self.encoder_prefixes)

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's tensors, named as in the finetune classifier of the same arch."""
        return {k: v for k, v in self.state_dict().items() if self.is_encoder_key(k)}


# ------------------------------------------------------------------------------------------- families
COMMON_MAE_OVERRIDES = (
    "img_size",
    "in_chans",
    "mask_ratio",
    "norm_pix_loss",
    "decoder_depth",
    "decoder_embed_dim",
)


def check_overrides(arch: str, given: dict, allowed: tuple[str, ...]) -> None:
    """A ConfigError naming every override that `arch` does not take, with the ones it does."""
    bad = [k for k in given if k not in allowed]
    if bad:
        raise ConfigError(
            [
                f"{arch}: unknown model setting {k!r}{did_you_mean(k, allowed)}; "
                f"allowed: {', '.join(allowed)}"
                for k in bad
            ]
        )


def mae_kwargs(arch: str, spec, overrides: dict, *, attention: bool = True) -> dict:
    """The build_mae arguments every family shares: image, channels, masking, loss and the decoder (None or
    absent decoder_* settings take the family's published decoder; `attention` adds decoder_num_heads)."""
    depth = overrides.get("decoder_depth")
    depth = spec.decoder_depth if depth is None else depth
    if depth < 0:
        raise ConfigError(f"model.decoder_depth: must be >= 0, got {depth}")
    width = overrides.get("decoder_embed_dim") or spec.decoder_embed_dim
    kwargs = dict(
        arch=arch,
        img_size=overrides.get("img_size", 224),
        in_chans=overrides.get("in_chans", 3),
        decoder_embed_dim=width,
        decoder_depth=depth,
        mask_ratio=overrides.get("mask_ratio", 0.75),
        norm_pix_loss=overrides.get("norm_pix_loss", True),
    )
    if attention:
        heads = overrides.get("decoder_num_heads") or default_decoder_heads(width)
        check_divisible("model.decoder_embed_dim", width, heads)
        kwargs["decoder_num_heads"] = heads
    return kwargs


def default_decoder_heads(decoder_embed_dim: int) -> int:
    """Heads of width 32 (the paper's 512-wide decoder has 16), or 1 head for widths not a multiple of 32."""
    return decoder_embed_dim // 32 if decoder_embed_dim >= 32 and decoder_embed_dim % 32 == 0 else 1


def check_divisible(key: str, dim: int, heads: int) -> None:
    if heads < 1 or dim % heads:
        raise ConfigError(f"{key}: width {dim} is not divisible by {heads} attention heads")


@dataclass(frozen=True)
class ModelFamily:
    """What the registry, checkpoint loader and optimizer helpers need to know about one family."""

    name: str
    build_mae: Callable[..., MaskedAutoencoder]  # (arch, spec, overrides) -> MAE
    build_classifier: Callable[..., nn.Module]  # (arch, spec, *, num_classes, img_size, ...) -> classifier
    layer_id: Callable[[str, nn.Module], int]  # parameter name -> layer index for layer-wise lr decay
    num_layers: Callable[[nn.Module], int]  # the top layer index (head, norms, decoder)
    normalize_state_dict: Callable[[dict], dict]  # official/timm checkpoint names -> ours
    head_prefix: str  # the classification layer's keys ("head." or "head.fc.")
    # Learned or fixed position embeddings that follow the image size: key -> number of prefix tokens.
    pos_embeds: dict = field(default_factory=dict)
    # Checkpoint keys that belong to a pretraining decoder besides `mask_token` / `decoder*`.
    extra_decoder_prefixes: tuple[str, ...] = ()

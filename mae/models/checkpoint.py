"""Loading weights into our models: our Lightning checkpoints, official MAE / ConvNeXt V2 / Hiera files, bare
state dicts. Every problem a user can cause (wrong stage, wrong number of classes, wrong arch, unreadable file)
is a CheckpointError with a one-line message that says what to do.

    report = load_weights(model, "pretrain.ckpt", expect="encoder")
    print(report)   # loaded / missing / unexpected / ignored / resized keys

`expect` says what the caller needs:
  "pretrain"    a pretraining checkpoint for an MAE (resume, reconstruction); an encoder-only file also loads,
                with exactly the decoder keys missing. A classifier checkpoint is an error.
  "classifier"  a finetuned classifier, head included, whose number of classes matches the model.
                A pretraining or encoder-only checkpoint is an error.
  "encoder"     backbone initialisation (finetuning from `train.pretrained_model_path`): the encoder of any
                checkpoint; its decoder and classification layer are ignored, the model's stay as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from timm.layers import resample_abs_pos_embed

from mae.errors import CheckpointError
from mae.fileio import read_torch_file
from mae.models.base import MaskedAutoencoder, ModelFamily
from mae.models.registry import family_of

EXPECT = ("pretrain", "classifier", "encoder")


@dataclass
class LoadReport:
    """What `load_weights` did. `source_kind` is "pretrain", "classifier" or "encoder"."""

    source: str
    source_kind: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model tensors the checkpoint did not provide
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors the model has no place for
    ignored: list[str] = field(default_factory=list)  # checkpoint tensors deliberately not used
    resized: list[str] = field(default_factory=list)  # position embeddings adapted to the model's grid

    def __str__(self) -> str:
        lines = [f"loaded {len(self.loaded)} tensors from {self.source} ({self.source_kind} checkpoint)"]
        for name in ("missing", "unexpected", "ignored", "resized"):
            keys = getattr(self, name)
            if keys:
                shown = ", ".join(keys[:12]) + (f", ... ({len(keys)} in all)" if len(keys) > 12 else "")
                lines.append(f"  {name}: {shown}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------- reading
def read_state_dict(source: str | Path | dict) -> tuple[dict[str, torch.Tensor], str]:
    """A checkpoint file or object -> (flat state dict, description of the source).

    Accepts our Lightning `.ckpt` ({'state_dict': {'model.<key>': ...}}), official `{'model': sd}` (MAE,
    ConvNeXt V2) and `{'model_state': sd}` (Hiera) files, and bare state dicts. Prefixes added by DDP
    (`module.`) and torch.compile (`_orig_mod.`) are removed.
    """
    if isinstance(source, dict):
        obj, desc = source, "state dict"
    else:
        path = Path(source)
        desc = str(path)
        obj = read_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{desc} holds a {type(obj).__name__}, not a state dict")
    if "state_dict" in obj and isinstance(obj["state_dict"], dict):  # Lightning
        sd = obj["state_dict"]
        if any(k.startswith("model.") for k in sd):
            sd = {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
    elif "model" in obj and isinstance(obj["model"], dict):  # official MAE / ConvNeXt V2
        sd = obj["model"]
    elif "model_state" in obj and isinstance(obj["model_state"], dict):  # official Hiera
        sd = obj["model_state"]
    else:
        sd = obj
    out = {}
    for k, v in sd.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{desc} is not a state dict: entry {k!r} is a {type(v).__name__}")
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    if not out:
        raise CheckpointError(f"{desc} holds no tensors")
    return out, desc


# ----------------------------------------------------------------------------------------- classifying
def _is_decoder_key(key: str, family: ModelFamily) -> bool:
    return key == "mask_token" or key.startswith("decoder") or key.startswith(family.extra_decoder_prefixes)


def _is_head_key(key: str, family: ModelFamily) -> bool:
    return key.startswith(family.head_prefix)


def source_kind(state_dict: dict, family: ModelFamily) -> str:
    """ "pretrain" (has a decoder), "classifier" (has a classification layer) or "encoder" (neither)."""
    if any(_is_decoder_key(k, family) for k in state_dict):
        return "pretrain"
    if any(_is_head_key(k, family) for k in state_dict):
        return "classifier"
    return "encoder"


def _check_stage(kind: str, expect: str, is_mae: bool, desc: str, arch: str) -> None:
    if expect == "pretrain":
        if not is_mae:
            raise ValueError("expect='pretrain' loads into an MAE built by build_mae, not a classifier")
        if kind == "classifier":
            raise CheckpointError(
                f"{desc} is a finetuned classifier checkpoint, but a pretraining (MAE) checkpoint is needed "
                "here; give a checkpoint from train.stage=pretrain, or use this one with train.stage=finetune"
            )
    elif expect == "classifier":
        if is_mae:
            raise ValueError("expect='classifier' loads into a classifier built by build_classifier")
        if kind != "classifier":
            raise CheckpointError(
                f"{desc} is a {kind} checkpoint without a classification head, but a finetuned classifier is "
                f"needed here; finetune it first (train.stage=finetune, train.pretrained_model_path={desc}) "
                "or run this action with train.stage=pretrain"
            )


# ------------------------------------------------------------------------------------------- adapting
def _fit_singletons(v: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Reshape tensors that differ only by singleton dims (GRN [1,1,1,C] vs [C], 1x1 conv vs linear)."""
    if v.shape != shape and v.numel() == shape.numel():
        if [d for d in v.shape if d != 1] == [d for d in shape if d != 1]:
            return v.reshape(shape)
    return v


def _resize_pos_embed(
    key: str, v: torch.Tensor, target: torch.Tensor, prefix_tokens: int, grid: tuple[int, int]
) -> torch.Tensor | None:
    """Bicubic resampling of a [1, prefix + h*w, D] position embedding to the model's grid; None if not one."""
    if v.dim() != 3 or target.dim() != 3 or v.shape[-1] != target.shape[-1]:
        return None
    old = v.shape[1] - prefix_tokens
    side = int(round(old**0.5))
    if side * side != old:
        return None
    return resample_abs_pos_embed(v.float(), new_size=list(grid), num_prefix_tokens=prefix_tokens).to(v.dtype)


def _pos_embed_grid(model: nn.Module, key: str) -> tuple[int, int] | None:
    """The token grid that `key` (a position embedding) covers in `model`."""
    if key == "decoder_pos_embed" and isinstance(model, MaskedAutoencoder):
        return model.grid_size
    if key == "pos_embed":
        if hasattr(model, "tokens_spatial_shape"):  # timm Hiera (classifier)
            return tuple(model.tokens_spatial_shape)
        if hasattr(model, "patch_embed") and hasattr(model.patch_embed, "grid_size"):
            return tuple(model.patch_embed.grid_size)  # ViT (MAE or classifier)
        if hasattr(model, "unroll"):  # Hiera MAE
            return tuple(model.unroll.size)
    return None


def load_weights(model: nn.Module, source: str | Path | dict, *, expect: str) -> LoadReport:
    """Load `source` into `model` (built by build_mae or build_classifier); see the module doc for `expect`.

    Position embeddings are resampled (bicubic) when the checkpoint's grid differs; fixed sin-cos ones keep
    the model's own values for its grid. Returns a LoadReport; raises CheckpointError for a wrong stage, a
    head with another number of classes, tensors of other shapes (another arch) or an unreadable file.
    """
    if expect not in EXPECT:
        raise ValueError(f"expect must be one of {EXPECT}, got {expect!r}")
    family = family_of(model)
    arch = getattr(model, "arch", family.name)
    raw, desc = read_state_dict(source)
    sd = family.normalize_state_dict(raw)
    kind = source_kind(sd, family)
    is_mae = isinstance(model, MaskedAutoencoder)
    _check_stage(kind, expect, is_mae, desc, arch)
    report = LoadReport(source=desc, source_kind=kind)
    own = model.state_dict()

    # Drop what the caller does not want from this checkpoint.
    for k in list(sd):
        drop_decoder = _is_decoder_key(k, family) and (expect == "encoder" or not is_mae)
        drop_head = _is_head_key(k, family) and (expect == "encoder" or is_mae)
        if drop_decoder or drop_head:
            report.ignored.append(k)
            del sd[k]
    # A global-pool ViT replaces the encoder's final norm by fc_norm (as in MAE finetuning).
    if family.name == "vit" and not is_mae and "norm.weight" not in own:
        for k in [k for k in sd if k.startswith("norm.")]:
            report.ignored.append(k)
            del sd[k]

    if expect == "classifier":
        head_w = family.head_prefix + "weight"
        if head_w in sd and head_w in own and sd[head_w].shape[0] != own[head_w].shape[0]:
            raise CheckpointError(
                f"{desc} has a head for {sd[head_w].shape[0]} classes but model.num_classes is "
                f"{own[head_w].shape[0]}; set model.num_classes: {sd[head_w].shape[0]} (it must match the "
                "class folders the checkpoint was trained on)"
            )

    mismatched = []
    to_load = {}
    for k, v in sd.items():
        if k not in own:
            report.unexpected.append(k)
            continue
        target = own[k]
        v = _fit_singletons(v, target.shape)
        if v.shape != target.shape and k in family.pos_embeds:
            grid = _pos_embed_grid(model, k)
            resized = None if grid is None else _resize_pos_embed(k, v, target, family.pos_embeds[k], grid)
            if resized is not None:
                report.resized.append(f"{k} {list(v.shape)} -> {list(target.shape)}")
                if (
                    isinstance(model, MaskedAutoencoder)
                    and not dict(model.named_parameters())[k].requires_grad
                ):
                    continue  # fixed sin-cos: the model's own values are the exact ones for its grid
                v = resized
        if v.shape != target.shape:
            mismatched.append(f"{k}: checkpoint {list(v.shape)} vs model {list(target.shape)}")
            continue
        to_load[k] = v
    if mismatched:
        raise CheckpointError(
            f"{desc} does not fit model.arch={arch}: {len(mismatched)} tensors have other shapes "
            f"(e.g. {mismatched[0]}); was it trained with another model.arch, patch size or in_chans?"
        )
    if not to_load and sd:
        raise CheckpointError(
            f"{desc} does not fit model.arch={arch}: none of its {len(sd)} tensors has a name of this model "
            f"(e.g. {next(iter(sd))!r}); was it trained with another model.arch?"
        )
    resized_keys = {r.split(" ")[0] for r in report.resized}
    report.missing = [k for k in own if k not in to_load and k not in resized_keys]
    if expect == "classifier" and report.missing:
        raise CheckpointError(
            f"{desc} lacks {len(report.missing)} tensors of the model.arch={arch} classifier "
            f"(e.g. {report.missing[0]}); was it trained with other model settings (e.g. model.global_pool)?"
        )
    model.load_state_dict(to_load, strict=False)
    report.loaded = sorted(to_load)
    return report

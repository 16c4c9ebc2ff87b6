"""A faster training step: torch.compile, fused AdamW, flash/memory-efficient attention, channels_last.

Each follows the spec's existing settings; `train.compile` is the only new key:

  train.compile   `network.compile()` (nn.Module.compile: compiled in place, so checkpoint keys do not
                  change; random ops drawn as in eager mode, so the seeded masks stay the same); off by
                  default until it is measured safe for every family
  fused AdamW     on CUDA, one fused kernel per step instead of a loop over tensors (the CPU keeps foreach)
  attention       ViT and Hiera attention call `scaled_dot_product_attention` (timm's `fused_attn`; Hiera's
                  windowed blocks through `FlashMaskUnitAttention`, 4-D). With 16-bit precision on CUDA a
                  two-image forward under `sdpa_kernel([flash, efficient, cuDNN])` checks that a fast kernel
                  serves every attention call; a warning says so when one would fall back to the math kernel
  channels_last   ConvNeXt V2 with 16-bit precision on CUDA: the network's weights and each batch in NHWC
                  (`BatchAugment(channels_last=True)`), the layout of cuDNN's tensor-core convolutions

In fp32 on the CPU each of them computes what the plain step computes (tests/test_engine_speed.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from mae.config import ExperimentConfig

log = logging.getLogger("mae")

SDPA_FAMILIES = ("vit", "hiera")


@dataclass(frozen=True)
class SpeedPlan:
    compile: bool
    fused_adamw: bool
    channels_last: bool
    check_attention: bool  # 16-bit on CUDA, ViT or Hiera: verify the fast attention kernels serve the model


def plan_speed(cfg: ExperimentConfig, *, cuda: bool) -> SpeedPlan:
    from mae.models.archs import get_arch

    family = get_arch(cfg.model.arch).family
    half = cfg.train.resolved_precision() in ("fp16", "bf16")
    return SpeedPlan(
        compile=cfg.train.compile,
        fused_adamw=cuda,
        channels_last=cuda and half and family == "convnextv2",
        check_attention=cuda and half and family in SDPA_FAMILIES,
    )


def prepare_network(network: torch.nn.Module, plan: SpeedPlan) -> torch.nn.Module:
    """channels_last weights and compilation, in place, as the plan says."""
    if plan.channels_last:
        network.to(memory_format=torch.channels_last)
    if plan.compile:
        import torch._inductor.config as inductor_config

        # random ops (the MAE masks) as eager draws them, so a compiled run takes the same seeded masks and
        # resumes exactly like an eager one; inductor's own generator would draw other numbers
        inductor_config.fallback_random = True
        network.compile()
    return network


def attention_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The attention modules of a timm-based network (those with timm's `fused_attn` switch)."""
    return [m for m in model.modules() if hasattr(m, "fused_attn")]


def check_fast_attention(
    model: torch.nn.Module, img_size: int, device: torch.device, dtype: torch.dtype
) -> str | None:
    """None when every attention call of a forward of two images runs on a flash, memory-efficient or cuDNN
    kernel at `dtype`; else why not (the caller warns: the math fallback is several times slower)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    slow = [type(m).__name__ for m in attention_modules(model) if not m.fused_attn]
    if slow:
        return f"{len(slow)} attention module(s) do not call scaled_dot_product_attention ({slow[0]})"
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]
    if hasattr(SDPBackend, "CUDNN_ATTENTION"):
        backends.append(SDPBackend.CUDNN_ATTENTION)
    imgs = torch.zeros(2, 3, img_size, img_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype), sdpa_kernel(backends):
            model.forward(imgs)  # not model(...): that would compile an eval-mode graph when compiling
    except RuntimeError as e:
        return str(e).strip().splitlines()[0][:200]
    finally:
        model.train(was_training)
    return None

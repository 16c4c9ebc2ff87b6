"""The faster step (mae.engine.speed): each speed-up computes what the plain step computes, in fp32 on the CPU;
the plan applies them only where the spec's device and precision call for them."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from timm.models.hiera import MaskUnitAttention
from torch.nn.attention import SDPBackend, sdpa_kernel

from mae.engine.modules import build_optimizer
from mae.engine.speed import (
    SpeedPlan,
    attention_modules,
    check_fast_attention,
    plan_speed,
    prepare_network,
)
from mae.models import build_classifier, build_mae
from mae.models.hiera import FlashMaskUnitAttention
from mae.spec import load_spec

PLAIN = SpeedPlan(compile=False, fused_adamw=False, channels_last=False, check_attention=False)


def test_plan_follows_device_precision_and_family():
    def plan(*overrides, cuda=True):
        return plan_speed(load_spec(None, list(overrides)), cuda=cuda)

    assert plan("model.arch=vit_base_patch16", "train.precision=bf16").check_attention
    assert plan("model.arch=hiera_tiny_224", "train.precision=fp16").check_attention
    assert not plan("model.arch=vit_base_patch16").check_attention  # fp32: the math kernel is expected
    assert plan("model.arch=convnextv2_atto", "train.precision=bf16").channels_last
    assert not plan("model.arch=convnextv2_atto").channels_last  # fp32 keeps the plain layout
    assert not plan("model.arch=vit_base_patch16", "train.precision=bf16").channels_last
    assert plan().fused_adamw and not plan(cuda=False).fused_adamw
    cpu = plan("model.arch=convnextv2_atto", "train.precision=bf16", cuda=False)
    assert not (cpu.channels_last or cpu.check_attention or cpu.fused_adamw)
    assert plan("train.compile=true", cuda=False).compile and not plan(cuda=False).compile


def _steps(net, imgs, *, fused: bool, steps: int = 3) -> tuple[list[float], torch.Tensor]:
    cfg = load_spec(None, ["model.arch=vit_micro_patch4", "image_size=32", "train.optim.lr=1e-3"])
    opt, _ = build_optimizer(cfg, net, total_steps=10, num_epochs=1, fused=fused)
    assert opt.defaults.get("fused") is (True if fused else None)
    noise = torch.rand(imgs.shape[0], net.num_mask_units, generator=torch.Generator().manual_seed(0))
    losses = []
    for _ in range(steps):
        loss, _, _ = net(imgs, noise=noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, torch.cat([p.detach().flatten() for p in net.parameters()])


def test_fused_adamw_updates_as_the_plain_one():
    torch.manual_seed(0)
    net = build_mae("vit_micro_patch4", img_size=32, decoder_depth=1, decoder_embed_dim=64)
    imgs = torch.randn(4, 3, 32, 32)
    plain_losses, plain = _steps(copy.deepcopy(net), imgs, fused=False)
    fused_losses, fused = _steps(copy.deepcopy(net), imgs, fused=True)
    assert fused_losses == pytest.approx(plain_losses, rel=1e-6)
    # the same update up to rounding; a few entries differ more: those whose gradient is mathematically zero
    # (attention key biases), where Adam scales rounding noise up to the learning rate
    assert ((plain - fused).abs() < 1e-6).float().mean() > 0.99


@pytest.mark.parametrize("arch", ["vit_micro_patch4", "hiera_tiny_224"])
def test_attention_runs_on_the_flash_kernel(arch):
    """Every attention call of ViT and Hiera takes SDPA's flash kernel (the CPU has one too): restricted to
    it, the forward runs, and gives the unrestricted result."""
    torch.manual_seed(0)
    size = 32 if arch.startswith("vit") else 64
    net = build_mae(arch, img_size=size).eval()
    assert attention_modules(net) and all(m.fused_attn for m in attention_modules(net))
    imgs = torch.randn(2, 3, size, size)
    noise = torch.rand(2, net.num_mask_units)
    with torch.no_grad():
        ref = net(imgs, noise=noise)[1]
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            fast = net(imgs, noise=noise)[1]
    assert torch.allclose(ref, fast, atol=1e-5)
    assert check_fast_attention(net, size, torch.device("cpu"), torch.bfloat16) is None


def test_hiera_windowed_attention_equals_timms_and_timms_misses_flash():
    torch.manual_seed(0)
    net = build_classifier("hiera_tiny_224", 10, img_size=64).eval()
    windowed = [b.attn for b in net.blocks if b.attn.use_mask_unit_attn]
    assert windowed and all(type(a) is FlashMaskUnitAttention for a in windowed)
    imgs = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = net(imgs)
        for a in windowed:
            a.__class__ = MaskUnitAttention  # timm's: 5-D tensors into SDPA
        timms = net(imgs)
        assert torch.allclose(ours, timms, atol=1e-5)
        why = check_fast_attention(net, 64, torch.device("cpu"), torch.bfloat16)
    assert why is not None and "kernel" in why.lower()  # timm's windowed blocks fall back to math


def test_check_names_modules_that_skip_sdpa():
    net = build_mae("vit_micro_patch4", img_size=32)
    net.blocks[0].attn.fused_attn = False
    assert "do not call scaled_dot_product_attention" in check_fast_attention(
        net, 32, torch.device("cpu"), torch.bfloat16
    )


def test_channels_last_convnext_computes_the_same():
    torch.manual_seed(0)
    net = build_mae("convnextv2_atto", img_size=64)
    fast = prepare_network(copy.deepcopy(net), SpeedPlan(False, False, True, False))
    convs = [m.weight for m in fast.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.dim() == 4]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    imgs = torch.randn(2, 3, 64, 64)
    noise = torch.rand(2, net.num_mask_units)
    loss_a, pred_a, _ = net(imgs, noise=noise)
    loss_b, pred_b, _ = fast(imgs.contiguous(memory_format=torch.channels_last), noise=noise)
    assert torch.allclose(pred_a, pred_b, atol=1e-5) and torch.allclose(loss_a, loss_b, atol=1e-6)
    loss_a.backward()
    loss_b.backward()
    grads = zip(net.parameters(), fast.parameters(), strict=True)
    assert max((a.grad - b.grad).abs().max().item() for a, b in grads if a.grad is not None) < 1e-5


def test_compile_keeps_checkpoint_keys():
    net = build_mae("vit_micro_patch4", img_size=32)
    keys = list(net.state_dict())
    prepare_network(net, SpeedPlan(True, False, False, False))
    assert list(net.state_dict()) == keys  # compiled in place: checkpoints keep the official MAE layout
    assert net._compiled_call_impl is not None
    assert prepare_network(build_mae("vit_micro_patch4", img_size=32), PLAIN)._compiled_call_impl is None


@pytest.mark.slow
def test_compiled_step_equals_eager_step():
    """torch.compile (inductor, C++ on the CPU) gives the eager loss and gradients in fp32."""
    torch.manual_seed(0)
    net = build_mae("vit_micro_patch4", img_size=32, decoder_depth=1, decoder_embed_dim=64)
    compiled = prepare_network(copy.deepcopy(net), SpeedPlan(True, False, False, False))
    imgs = torch.randn(4, 3, 32, 32)
    noise = torch.rand(4, net.num_mask_units)
    eager_loss = net(imgs, noise=noise)[0]
    compiled_loss = compiled(imgs, noise=noise)[0]
    assert torch.allclose(eager_loss, compiled_loss, atol=1e-5)
    eager_loss.backward()
    compiled_loss.backward()
    grads = zip(net.parameters(), compiled.parameters(), strict=True)
    assert max((a.grad - b.grad).abs().max().item() for a, b in grads if a.grad is not None) < 1e-4


@pytest.mark.slow
def test_train_compile_field_trains(tmp_path, digits_small):
    """train.compile=true runs a whole (one-epoch) training, with the loss of the eager run."""
    from mae.engine.trainer import run_training

    def train(name, *extra):
        cfg = load_spec(
            None,
            [
                f"results_dir={tmp_path / name}",
                f"dataset.train_data_sources={digits_small['train']}",
                "model.arch=vit_micro_patch4",
                "image_size=32",
                "model.decoder_depth=1",
                "model.decoder_embed_dim=64",
                "dataset.num_workers_per_gpu=0",
                "batch_size=40",
                "num_epochs=1",
                *extra,
            ],
        )
        return run_training(cfg, mlflow=False, enable_progress_bar=False).metrics["train_loss"]

    eager, compiled = train("eager"), train("compiled", "train.compile=true")
    assert compiled == pytest.approx(eager, rel=1e-4)


def test_sdpa_restriction_really_restricts():
    """The check relies on sdpa_kernel refusing what the chosen kernels cannot serve (5-D inputs here)."""
    q = torch.randn(1, 2, 3, 4, 8)
    with pytest.raises(RuntimeError), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        F.scaled_dot_product_attention(q, q, q)

"""param_groups: weight-decay exclusions and layer-wise learning-rate decay, checked through real optimizer
steps."""

from __future__ import annotations

import pytest
import torch

import mae.models as M
from mae.models.testing import tiny_classifier_kwargs, tiny_mae_overrides

ARCHS = ["vit_tiny_patch4", "convnextv2_atto", "hiera_tiny_224"]


def classifier(arch):
    torch.manual_seed(0)
    return M.build_classifier(arch, 3, **tiny_classifier_kwargs(arch))


@pytest.mark.parametrize("arch", ARCHS)
def test_every_trainable_parameter_once_and_decay_rules(arch):
    model = M.build_mae(arch, **tiny_mae_overrides(arch))
    first = model.stages[0] if arch.startswith("convnext") else model.blocks[0]
    first.requires_grad_(False)  # e.g. train.freeze
    groups = M.param_groups(model, weight_decay=0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    seen = [names[id(p)] for g in groups for p in g["params"]]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sorted(seen) == sorted(trainable)
    for g in groups:
        for p in g["params"]:
            n = names[id(p)]
            no_decay = p.ndim <= 1 or n.split(".")[-1] in ("cls_token", "mask_token", "pos_embed")
            assert g["weight_decay"] == (0.0 if no_decay else 0.05), n
        assert g["lr_scale"] == 1.0
    assert "pos_embed" not in seen or arch == "hiera_tiny_224"  # the ViT's sin-cos table is frozen
    no_decay_names = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert "mask_token" in no_decay_names
    assert any(n.endswith("norm.weight") or n.endswith("norm1.weight") for n in no_decay_names)


@pytest.mark.parametrize("arch", ARCHS)
def test_layer_decay_is_applied_by_the_optimizer(arch):
    model = classifier(arch)
    lr, decay = 0.1, 0.5
    groups = M.param_groups(model, weight_decay=0.0, layer_decay=decay, lr=lr)
    family = M.family_of(model)
    top = family.num_layers(model)
    by_name = {n: p for n, p in model.named_parameters()}
    before = {n: p.detach().clone() for n, p in by_name.items()}
    opt = torch.optim.SGD(groups, lr=lr)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()  # p -= group lr * 1
    for n, p in by_name.items():
        scale = decay ** (top - family.layer_id(n, model))
        assert torch.allclose(before[n] - p.detach(), torch.full_like(p, lr * scale), atol=1e-6), n
    head = "head.weight" if arch.startswith("vit") else "head.fc.weight"
    first = "patch_embed.proj.weight" if "patch_embed.proj.weight" in by_name else "stem.0.weight"
    assert family.layer_id(head, model) == top and family.layer_id(first, model) == 0
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=4)  # schedulers keep the per-group ratio
    for _ in range(2):
        opt.step()
        sched.step()
    lrs = {g["layer_id"]: g["lr"] for g in opt.param_groups}
    assert lrs[top] == pytest.approx(0.5 * lr) and lrs[0] == pytest.approx(0.5 * lr * decay**top)


def test_vit_layer_ids():
    model = classifier("vit_tiny_patch4")  # one block
    ids = {n: M.family_of(model).layer_id(n, model) for n, _ in model.named_parameters()}
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1
    assert ids["fc_norm.weight"] == ids["head.weight"] == 2


def test_no_layer_decay_means_one_scale_and_bad_values_fail():
    model = classifier("convnextv2_atto")
    assert {g["lr_scale"] for g in M.param_groups(model, weight_decay=0.05, layer_decay=1.0)} == {1.0}
    with pytest.raises(ValueError, match="layer_decay"):
        M.param_groups(model, weight_decay=0.05, layer_decay=0.0)
    with pytest.raises(TypeError, match="not built by mae.models"):
        M.param_groups(torch.nn.Linear(2, 2), weight_decay=0.0, layer_decay=0.5)
    assert len(M.param_groups(torch.nn.Linear(2, 2), weight_decay=0.1)) == 2  # plain modules without decay


def test_backbone_multiplier_scales_the_backbone_only():
    clf = classifier("vit_tiny_patch4")
    groups = M.param_groups(clf, weight_decay=0.05, layer_decay=0.5, lr=1.0, backbone_multiplier=0.1)
    names = {id(p): n for n, p in clf.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["head.weight"] == 1.0 and scale["fc_norm.weight"] == 1.0
    assert scale["blocks.0.attn.qkv.weight"] == pytest.approx(0.1 * 0.5)
    assert scale["patch_embed.proj.weight"] == pytest.approx(0.1 * 0.25)
    assert all(g["lr"] == pytest.approx(g["lr_scale"]) for g in groups)
    mae_model = M.build_mae("vit_tiny_patch4", **tiny_mae_overrides("vit_tiny_patch4"))
    groups = M.param_groups(mae_model, weight_decay=0.05, backbone_multiplier=0.5)
    names = {id(p): n for n, p in mae_model.named_parameters()}
    scale = {names[id(p)]: g["lr_scale"] for g in groups for p in g["params"]}
    assert scale["blocks.0.norm1.weight"] == 0.5 and scale["decoder_pred.weight"] == 1.0

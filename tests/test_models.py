"""The shared model suite: every MAE family obeys the same contract (masking, patch layout, loss, features,
encoder transfer), and every registered arch builds and trains at a small size on CPU."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import mae.models as M
from mae.errors import ConfigError
from mae.models.testing import small_img_size, tiny_classifier_kwargs, tiny_mae_overrides

# One small arch per family; ViT-Ti/4 at 32 px has 64 mask units, the others 4 (2 x 2) at 64 px.
FAMILY_ARCHS = ["vit_tiny_patch4", "convnextv2_atto", "hiera_tiny_224"]
TAO_ARCHS = [
    *(f"convnextv2_{s}" for s in ("atto", "femto", "pico", "nano", "tiny", "base", "large", "huge")),
    *(f"hiera_{s}_224" for s in ("tiny", "small", "base", "large", "huge")),
    "vit_base_patch16",
    "vit_large_patch16",
    "vit_huge_patch14",
]
HEAD_KEYS = {
    "vit": {"head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"},
    "convnextv2": {"head.fc.weight", "head.fc.bias", "head.norm.weight", "head.norm.bias"},
    "hiera": {"head.fc.weight", "head.fc.bias", "head.norm.weight", "head.norm.bias"},
}


def tiny_mae(arch: str, **kw) -> M.MaskedAutoencoder:
    torch.manual_seed(0)
    return M.build_mae(arch, **{**tiny_mae_overrides(arch), **kw})


def images(arch: str, n: int = 2, seed: int = 0) -> torch.Tensor:
    s = small_img_size(arch)
    return torch.randn(n, 3, s, s, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(params=FAMILY_ARCHS)
def arch(request) -> str:
    return request.param


# ------------------------------------------------------------------------------------------- registry
def test_registry_has_tao_and_small_archs():
    names = M.list_archs()
    assert set(TAO_ARCHS) <= set(names)
    assert {"vit_tiny_patch16", "vit_small_patch16", "vit_tiny_patch4"} <= set(names)
    assert len(names) == len(set(names))


def test_unknown_arch_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        M.build_mae("vit_base_patch61")
    msg = str(e.value)
    assert "model.arch" in msg and "did you mean 'vit_base_patch16'" in msg
    assert all(a in msg for a in M.list_archs())
    with pytest.raises(ConfigError):
        M.build_classifier("resnet50", 10)


def test_unknown_override_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown model setting 'depths'.*allowed"):
        M.build_mae("vit_tiny_patch4", depths=(1, 1, 1, 1))
    with pytest.raises(ConfigError, match="'dept'.*did you mean 'depth'"):
        M.build_classifier("vit_tiny_patch4", 10, dept=2)


def test_mae_models_import_does_not_import_torch():
    code = (
        "import sys, mae.models as m; assert 'torch' not in sys.modules, 'torch imported';"
        "assert 'vit_base_patch16' in m.list_archs(); m.build_mae; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# ------------------------------------------------------------------------------------ patch layout
def test_patchify_unpatchify_round_trip(arch):
    model = tiny_mae(arch)
    x = images(arch)
    patches = model.patchify(x)
    p = model.patch_size
    assert patches.shape == (2, model.num_patches, p * p * 3)
    assert torch.equal(model.unpatchify(patches), x)
    # Patch k = (row, col) in row-major order, pixels inside as (row, col, channel).
    gw = model.grid_size[1]
    k = model.num_patches - 2
    r, c = divmod(k, gw)
    expected = x[1, :, r * p : (r + 1) * p, c * p : (c + 1) * p].permute(1, 2, 0).reshape(-1)
    assert torch.equal(patches[1, k], expected)


def test_mask_to_pixels_matches_patch_mask(arch):
    model = tiny_mae(arch)
    mask = model.random_masking(3, 0.5, None, torch.device("cpu")).mask
    pix = model.mask_to_pixels(mask)  # [N, 1, H, W]
    per_patch = model.patchify(pix.expand(-1, 3, -1, -1))  # [N, P, p*p*3]
    pm = model.patch_mask(mask)
    assert torch.equal(per_patch.amin(-1), pm) and torch.equal(per_patch.amax(-1), pm)


# ------------------------------------------------------------------------------------------ masking
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9])
def test_exact_number_of_masked_units_per_sample(arch, ratio):
    model = tiny_mae(arch)
    num_units = model.num_mask_units
    keep = int(num_units * (1 - ratio))
    if keep < 1:
        with pytest.raises(ConfigError, match="no visible mask unit"):
            model(images(arch, 4), mask_ratio=ratio)
        return
    loss, pred, mask = model(images(arch, 4), mask_ratio=ratio)
    assert mask.shape == (4, num_units)
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert mask.sum(dim=1).tolist() == [num_units - keep] * 4
    assert pred.shape == (4, model.num_patches, model.patch_size**2 * 3)
    assert torch.isfinite(loss)


def test_smallest_noise_is_kept(arch):
    model = tiny_mae(arch)
    num_units = model.num_mask_units
    noise = torch.rand(3, num_units, generator=torch.Generator().manual_seed(1))
    mask = model.random_masking(3, 0.75, noise, torch.device("cpu")).mask
    keep = int(num_units * 0.25)
    rank = noise.argsort(dim=1).argsort(dim=1)  # rank of each unit's noise in its sample
    assert torch.equal(mask, (rank >= keep).float())


def test_deterministic_given_noise(arch):
    model = tiny_mae(arch).eval()
    x = images(arch)
    noise = torch.rand(2, model.num_mask_units, generator=torch.Generator().manual_seed(2))
    a = model(x, noise=noise)
    b = model(x, noise=noise)
    for u, v in zip(a, b, strict=True):
        assert torch.equal(u, v)
    other = model(x, noise=1.0 - noise)[2]
    assert not torch.equal(other, a[2])


def test_bad_mask_arguments(arch):
    model = tiny_mae(arch)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        model(images(arch), mask_ratio=1.0)
    with pytest.raises(ValueError, match="noise must have shape"):
        model(images(arch), noise=torch.rand(2, model.num_mask_units + 1))


# --------------------------------------------------------------------------------------------- loss
def test_loss_ignores_visible_patch_predictions(arch):
    model = tiny_mae(arch)
    x = images(arch)
    _, pred, mask = model(x)
    pred = pred.detach().requires_grad_(True)
    loss = model.forward_loss(x, pred, mask)
    loss.backward()
    visible = model.patch_mask(mask) == 0  # [N, P]
    assert visible.any() and (~visible).any()
    assert torch.all(pred.grad[visible] == 0)
    assert torch.all(pred.grad[~visible].abs().sum(-1) > 0)
    # Invariance: any change of the visible predictions leaves the loss as it is.
    changed = pred.detach().clone()
    changed[visible] += 100.0
    assert torch.equal(model.forward_loss(x, changed, mask), loss.detach())


def test_norm_pix_loss_formula(arch):
    model = tiny_mae(arch)
    x = images(arch, 2)
    n, num_patches = 2, model.num_patches
    pred = torch.randn(n, num_patches, model.patch_size**2 * 3, generator=torch.Generator().manual_seed(3))
    mask = model.random_masking(n, 0.5, None, torch.device("cpu")).mask
    pmask = model.patch_mask(mask)

    def expected(norm: bool) -> torch.Tensor:
        total, count = 0.0, 0
        for i in range(n):
            for k in range(num_patches):
                if pmask[i, k] == 0:
                    continue
                t = model.patchify(x)[i, k].double()
                if norm:
                    mean = t.sum() / t.numel()
                    var = ((t - mean) ** 2).sum() / (t.numel() - 1)  # unbiased
                    t = (t - mean) / torch.sqrt(var + 1e-6)
                total += ((pred[i, k].double() - t) ** 2).mean()
                count += 1
        return total / count

    model.norm_pix_loss = True
    assert torch.allclose(model.forward_loss(x, pred, mask).double(), expected(True), rtol=1e-5)
    model.norm_pix_loss = False
    assert torch.allclose(model.forward_loss(x, pred, mask).double(), expected(False), rtol=1e-5)


def test_norm_pix_loss_default_and_override():
    assert M.build_mae("vit_tiny_patch4", img_size=32, depth=1).norm_pix_loss is True
    assert M.build_mae("vit_tiny_patch4", img_size=32, depth=1, norm_pix_loss=False).norm_pix_loss is False
    assert M.build_mae("vit_tiny_patch4", img_size=32, depth=1).mask_ratio == 0.75


def test_mixed_precision_forward_backward(arch):
    """bf16 autocast (fp16 behaves alike and is slow on CPU): the loss stays float32."""
    model = tiny_mae(arch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, mask = model(images(arch))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()


# ---------------------------------------------------------------------------- features and transfer
def test_forward_features_is_pooled_and_whole_image(arch):
    model = tiny_mae(arch).eval()
    x = images(arch, 3)
    feats = model.forward_features(x)
    assert feats.shape == (3, model.num_features) and torch.isfinite(feats).all()
    assert torch.equal(model.forward_features(x), feats)  # no random masking inside


def test_encoder_state_dict_loads_into_classifier(arch):
    model = tiny_mae(arch)
    clf = M.build_classifier(arch, 7, **tiny_classifier_kwargs(arch))
    enc = model.encoder_state_dict()
    assert enc and not any(k.startswith(("decoder", "mask_token")) for k in enc)
    report = M.load_weights(clf, enc, expect="encoder")
    assert set(report.missing) == HEAD_KEYS[model.family]
    assert report.unexpected == []
    own = clf.state_dict()
    for k in report.loaded:
        assert torch.equal(own[k], enc[k]), k
    backbone = {k for k in own if k not in HEAD_KEYS[model.family]}
    assert backbone <= set(enc)  # no backbone key of the classifier is left at its init


def test_classifier_contract(arch):
    clf = M.build_classifier(arch, 5, drop_path_rate=0.0, **tiny_classifier_kwargs(arch)).eval()
    x = images(arch, 3)
    assert clf.num_classes == 5
    logits = clf(x)
    feats = clf.forward_features(x)
    assert logits.shape == (3, 5) and feats.dim() == 2 and feats.shape[0] == 3
    head = clf.head if clf.family == "vit" else clf.head.fc
    assert torch.allclose(logits, head(feats), atol=1e-6)
    assert head.weight.std() < 1e-4 and torch.all(head.bias == 0)  # small head init


def test_drop_path_rate_is_honoured(arch):
    from timm.layers import DropPath

    def rates(model):
        return [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]

    kw = tiny_classifier_kwargs(arch)
    if "depth" in kw:
        kw["depth"] = 2  # the stochastic-depth rule gives the first block rate 0
    assert rates(M.build_classifier(arch, 3, drop_path_rate=0.0, **kw)) == []
    r = rates(M.build_classifier(arch, 3, drop_path_rate=0.3, **kw))
    assert r and max(r) == pytest.approx(0.3)  # linear rule: the last block drops at the full rate


def test_global_pool_setting():
    kw = tiny_classifier_kwargs("vit_tiny_patch4")
    pooled = M.build_classifier("vit_tiny_patch4", 3, global_pool=True, **kw)
    token = M.build_classifier("vit_tiny_patch4", 3, global_pool=False, **kw)
    assert "fc_norm.weight" in pooled.state_dict() and "norm.weight" not in pooled.state_dict()
    assert "norm.weight" in token.state_dict() and "fc_norm.weight" not in token.state_dict()
    assert pooled.global_pool == "avg" and token.global_pool == "token"
    for a in ("convnextv2_atto", "hiera_tiny_224"):
        with pytest.raises(ConfigError, match="global_pool"):
            M.build_classifier(a, 3, global_pool=False, **tiny_classifier_kwargs(a))


def test_decoder_settings_are_honoured(arch):
    model = M.build_mae(arch, **{**tiny_mae_overrides(arch), "decoder_depth": 2, "decoder_embed_dim": 96})
    assert len(model.decoder_blocks) == 2
    assert model.mask_token.shape[1 if model.family == "convnextv2" else -1] == 96
    model(images(arch))[0].backward()


@pytest.mark.parametrize(
    ("arch", "depth"), [("vit_base_patch16", 8), ("convnextv2_base", 1), ("hiera_base_224", 8)]
)
def test_decoder_defaults_per_family(arch, depth):
    with torch.device("meta"):
        model = M.build_mae(arch, decoder_depth=None, decoder_embed_dim=None)
    assert len(model.decoder_blocks) == depth
    assert model.decoder_embed.weight.shape[0] == 512


def _onnx_round_trip(module: torch.nn.Module, x: torch.Tensor, tmp_path) -> None:
    import onnxruntime

    path = tmp_path / "model.onnx"
    batch = torch.export.Dim("batch")
    torch.onnx.export(module, (x,), path, dynamo=True, external_data=False, dynamic_shapes=({0: batch},))
    session = onnxruntime.InferenceSession(str(path))
    x3 = torch.cat([x, x[:1]])  # another batch size
    (out,) = session.run(None, {session.get_inputs()[0].name: x3.numpy()})
    assert torch.allclose(torch.from_numpy(out), module(x3), atol=1e-4)


@pytest.mark.slow
def test_classifier_and_encoder_export_to_onnx(arch, tmp_path):
    """The deploy path: classifiers and MAE encoders (forward_features) export and match onnxruntime.
    Hiera's mask-unit attention switches to the explicit form while exporting (5-D SDPA has no ONNX form)."""
    x = images(arch)
    clf = M.build_classifier(arch, 4, **tiny_classifier_kwargs(arch)).eval()
    _onnx_round_trip(clf, x, tmp_path)

    class Features(torch.nn.Module):
        def __init__(self, mae):
            super().__init__()
            self.mae = mae

        def forward(self, imgs):
            return self.mae.forward_features(imgs)

    _onnx_round_trip(Features(tiny_mae(arch)).eval(), x, tmp_path)


# ------------------------------------------------------------------------------------ every arch
def _check_all_grads(model: torch.nn.Module) -> None:
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert no_grad == [], f"parameters without gradient: {no_grad[:5]}"


# Even with one block per stage these three are 30-110 M parameters (seconds each on 2 cores): they run with
# the slow tests; their construction at full size is checked on the meta device in the family test files.
HEAVY = {"convnextv2_large", "convnextv2_huge", "hiera_huge_224"}


@pytest.mark.parametrize(
    "name", [pytest.param(a, marks=pytest.mark.slow) if a in HEAVY else a for a in M.list_archs()]
)
def test_every_arch_pretrains_and_finetunes_at_small_size(name):
    model = tiny_mae(name)
    x = images(name)
    loss, pred, mask = model(x)
    assert torch.isfinite(loss) and mask.shape == (2, model.num_mask_units)
    loss.backward()
    _check_all_grads(model)
    clf = M.build_classifier(name, 4, **tiny_classifier_kwargs(name))
    M.load_weights(clf, model.encoder_state_dict(), expect="encoder")
    torch.nn.functional.cross_entropy(clf(x), torch.tensor([0, 3])).backward()
    _check_all_grads(clf)


@pytest.mark.slow
@pytest.mark.parametrize("name", M.list_archs())
def test_every_full_size_arch_pretrains_at_small_resolution(name):
    torch.manual_seed(0)
    s = small_img_size(name)
    model = M.build_mae(name, img_size=s)
    loss, _, _ = model(torch.randn(2, 3, s, s))
    loss.backward()
    assert torch.isfinite(loss)
    _check_all_grads(model)

"""Engine pieces that need no training run: schedules, kNN accuracy, checkpoint IO and resolution, seeding."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from mae.engine.checkpoints import (
    AtomicCheckpointIO,
    find_checkpoint,
    load_checkpoint_file,
    resolve_checkpoint,
)
from mae.engine.data import SeededSampler
from mae.engine.knn import knn_accuracy
from mae.engine.schedule import lr_factor_fn
from mae.errors import CheckpointError


def test_cosine_with_warmup():
    f = lr_factor_fn("cosine", total_steps=100, steps_per_epoch=10, warmup_epochs=2)
    assert f(0) == 0.0 and f(10) == pytest.approx(0.5) and f(20) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5 * (1 + math.cos(math.pi * 40 / 80)))
    assert f(100) == pytest.approx(0.0, abs=1e-12)
    assert all(f(s) >= f(s + 1) for s in range(20, 99))  # monotone after warmup


def test_multistep_with_milestones_and_gamma():
    f = lr_factor_fn(
        "MultiStep", total_steps=100, steps_per_epoch=10, warmup_epochs=0, milestones=[3, 7], gamma=0.5
    )
    assert [f(s) for s in (0, 29, 30, 69, 70, 99)] == [1.0, 1.0, 0.5, 0.5, 0.25, 0.25]
    constant = lr_factor_fn("MultiStep", total_steps=50, steps_per_epoch=5, warmup_epochs=1)
    assert constant(4) == pytest.approx(0.8) and constant(5) == constant(49) == 1.0


def test_knn_accuracy_separable_vs_random():
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(5).repeat_interleave(20)
    centers = torch.randn(5, 16, generator=g) * 5
    feats = centers[labels] + torch.randn(100, 16, generator=g) * 0.5
    assert knn_accuracy(feats, labels) == 1.0
    noise = torch.randn(100, 16, generator=g)
    assert knn_accuracy(noise, labels) < 0.45  # chance is 0.2
    # leave-one-out: a lone sample of a class can never be right
    assert knn_accuracy(torch.eye(3), torch.tensor([0, 1, 2])) == 0.0


def test_atomic_checkpoint_io(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "ck" / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}}, path)
    assert torch.equal(load_checkpoint_file(path)["state_dict"]["w"], torch.ones(2))

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint_file(path)["state_dict"]["w"], torch.ones(2))  # old file intact
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temp file left


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_malicious_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": _Evil()}, f)
    with pytest.raises(
        CheckpointError, match=r"cannot read checkpoint .*: .*safe loader \(weights_only=True\)"
    ):
        load_checkpoint_file(path)


def test_parent_resolution_prefers_best_then_last(tmp_path):
    d = tmp_path / "run" / "train" / "checkpoints"
    d.mkdir(parents=True)
    for name in ("epoch-0.ckpt", "epoch-1.ckpt", "last.ckpt", "best.ckpt"):
        torch.save({}, d / name)
    assert find_checkpoint(tmp_path / "run") == d / "best.ckpt"
    assert resolve_checkpoint(tmp_path / "run" / "train", key="k", prefer="last") == d / "last.ckpt"
    (d / "best.ckpt").unlink()
    (d / "last.ckpt").unlink()
    assert resolve_checkpoint(d, key="k").name in ("epoch-0.ckpt", "epoch-1.ckpt")
    (tmp_path / "run" / "evaluate").mkdir()
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        resolve_checkpoint(tmp_path / "run" / "evaluate", key="evaluate.checkpoint")
    with pytest.raises(CheckpointError, match="no such file or folder"):
        resolve_checkpoint(tmp_path / "nope", key="k")


def test_seeded_sampler_shards_and_reproduces():
    s = SeededSampler(10, seed=1)
    s.set_epoch(3)
    a = list(s)
    s.set_epoch(3)
    assert list(s) == a and sorted(i for i, _ in a) == list(range(10))
    s.set_epoch(4)
    assert [i for i, _ in s] != [i for i, _ in a]  # a new permutation per epoch
    r0, r1 = SeededSampler(5, 1, rank=0, world_size=2), SeededSampler(5, 1, rank=1, world_size=2)
    idx = [i for i, _ in r0] + [i for i, _ in r1]
    assert len(r0) == len(r1) == 3 and set(idx) == set(range(5))
    seeds = [sd for _, sd in SeededSampler(100, 7)]
    assert len(set(seeds)) == 100  # every sample has its own seed


def test_wandb_is_optional_and_configured_from_the_spec(monkeypatch, caplog, tmp_path):
    import logging
    import sys
    import types

    from mae.spec import load_spec
    from mae.tracking import WandbRun

    assert WandbRun.start(load_spec(None, []), "r", tmp_path) is None  # off by default
    cfg = load_spec(None, ["wandb.enable=true", "wandb.project=p", "wandb.tags=[a]", "wandb.run_id=abc"])
    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with caplog.at_level(logging.WARNING, logger="mae"):
        assert WandbRun.start(cfg, "r", tmp_path) is None
    assert "W&B logging is off" in caplog.text
    calls = []

    class FakeRun:
        def log(self, metrics, step):
            calls.append(("log", metrics, step))

        def finish(self, exit_code):
            calls.append(("finish", exit_code))

    fake = types.SimpleNamespace(init=lambda **kw: calls.append(("init", kw)) or FakeRun())
    monkeypatch.setitem(sys.modules, "wandb", fake)
    run = WandbRun.start(cfg, "r", tmp_path)
    run.log_metrics({"train_loss": 1.0}, step=3)
    run.finish("FAILED")
    init = calls[0][1]
    assert (
        init["project"] == "p" and init["tags"] == ["a"] and init["id"] == "abc" and init["resume"] == "allow"
    )
    assert init["name"] == "r" and init["config"]["wandb"]["enable"] is True
    assert calls[1:] == [("log", {"train_loss": 1.0}, 3), ("finish", 1)]

"""End-to-end training throughput (images/s) on the embedded default, data loading included.

    python benchmarks/bench_train.py [--epochs 4] [--spec examples/demo.yaml] [key=value ...]

Runs `mae train` (the engine: Lightning, the seeded data pipeline from the digits archives, checkpoints,
status.json) on the demo spec, and beside it, in the same process, a bare loop over the same model, batch size
and optimizer on tensors already in memory (no data loading, no Lightning, no checkpoints). The ratio
engine / bare loop is the share of the model's own speed that reaches end-to-end training; medians over the
epochs after the first (which pays for start-up).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from automl.demo import DEMO_SPEC
from mae.data.digits import build_digits_dataset  # noqa: E402
from mae.engine.modules import build_optimizer  # noqa: E402
from mae.engine.trainer import build_network, run_training  # noqa: E402
from mae.spec import load_spec  # noqa: E402


def bare_loop(cfg, steps: int) -> float:
    """images/s of forward + backward + AdamW on in-memory tensors on the same device and precision
    (median over `steps`)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, _ = build_network(cfg)
    net.to(device)
    size, bs = cfg.dataset.augmentation.input_size, cfg.dataset.batch_size
    opt, _ = build_optimizer(cfg, net, total_steps=steps + 2, num_epochs=1)
    imgs = torch.randn(bs, 3, size, size, device=device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.train.resolved_precision())
    if device.type == "cpu" and dtype is torch.float16:
        dtype = torch.bfloat16  # as the engine does on the CPU
    scaler = torch.amp.GradScaler(enabled=dtype is torch.float16 and device.type == "cuda")
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = net(imgs)[0] if cfg.train.stage == "pretrain" else net(imgs).logsumexp(-1).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return bs / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--spec", default=str(DEMO_SPEC))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = build_digits_dataset(Path(tmp) / "data")
        cfg = load_spec(
            args.spec,
            [
                f"results_dir={tmp}",
                f"dataset.train_data_sources={data['train']}",
                f"dataset.val_data_sources={data['val']}",
                f"dataset.test_data_sources={data['test']}",
                f"num_epochs={args.epochs}",
                "train.optim.warmup_epochs=0",
                *args.overrides,
            ],
            action="train",
        )
        rates: list[float] = []
        run_training(
            cfg,
            mlflow=False,
            enable_progress_bar=False,
            on_epoch=lambda e, m: rates.append(m["images_per_sec"]),
        )
        engine = statistics.median(rates[1:] or rates)
        bare = bare_loop(cfg, steps=10)
    device = (
        torch.cuda.get_device_name()
        if torch.cuda.is_available()
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"device: {device}; arch {cfg.model.arch} at {cfg.dataset.augmentation.input_size} px, "
        f"batch {cfg.dataset.batch_size}, {cfg.train.precision}, stage {cfg.train.stage}, "
        f"workers {cfg.dataset.num_workers_per_gpu}"
    )
    print(f"engine (end to end, per epoch): {', '.join(f'{r:.0f}' for r in rates)} images/s")
    print(
        f"engine median: {engine:.1f} images/s | bare loop: {bare:.1f} images/s | ratio {engine / bare:.2f}"
    )


if __name__ == "__main__":
    main()

"""Pretraining step throughput (images/s) of one MAE arch, and its model FLOPs utilisation (MFU).

    python benchmarks/bench_pretrain_step.py --arch vit_base_patch16 --img-size 224 --batch-size 64
    python benchmarks/bench_pretrain_step.py --arch convnextv2_atto --img-size 64 --batch-size 8 --device cpu \
        --steps 5 --warmup 2 --baseline

One step = forward (random masking, encoder, decoder, loss) + backward + AdamW update, on synthetic images
already on the device. The step time is the median over `--steps` timed steps after `--warmup` ones. Model
FLOPs are counted once per step with torch.utils.flop_counter (matmuls and convolutions, forward and backward;
attention counted through the math kernel so every device counts it the same way). MFU = achieved FLOP/s /
the device's dense peak for the precision used; the peak is known for common NVIDIA data-centre GPUs, otherwise
give it with --peak-tflops. `--baseline` also runs fp32 without torch.compile and prints the speed ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from mae.models import build_mae, list_archs, param_groups  # noqa: E402

# Dense (no sparsity) peak TFLOP/s from NVIDIA's data sheets: (bf16/fp16 tensor core, tf32, fp32).
# The first name found in torch.cuda.get_device_name() wins, so specific names come first.
PEAK_TFLOPS = [
    ("H200", (989.4, 494.7, 66.9)),
    ("H100 PCIe", (756.5, 378.0, 51.2)),
    ("H100 NVL", (835.5, 417.5, 60.0)),
    ("H100", (989.4, 494.7, 66.9)),  # SXM
    ("A100", (312.0, 156.0, 19.5)),
    ("L40S", (362.1, 183.0, 91.6)),
    ("L4", (121.0, 60.0, 30.3)),
    ("A10", (125.0, 62.5, 31.2)),
]
PRECISIONS = ("bf16", "fp16", "tf32", "fp32")


def peak_tflops(device: torch.device, precision: str) -> tuple[float, str] | None:
    """(peak TFLOP/s, where it comes from) for a known GPU, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            index = {"bf16": 0, "fp16": 0, "tf32": 1, "fp32": 2}[precision]
            return peaks[index], f"{key} {precision} dense, data sheet"
    return None


def make_step(model, optimizer, imgs, precision: str, scaler):
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    def step() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(imgs.device.type, dtype=dtype, enabled=dtype is not None):
            loss, _, _ = model(imgs)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        return loss

    return step


def count_flops(step) -> int:
    """FLOPs of one training step (forward + backward), attention through the countable math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        step()
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(args, precision: str, compile_model: bool) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(0)
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    torch.backends.cudnn.allow_tf32 = precision == "tf32"
    model = build_mae(args.arch, img_size=args.img_size, mask_ratio=args.mask_ratio).to(device)
    memory_format = torch.channels_last if args.arch.startswith("convnextv2") else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    imgs = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    imgs = imgs.contiguous(memory_format=memory_format)
    groups = param_groups(model, weight_decay=0.05, lr=1.5e-4)
    optimizer = torch.optim.AdamW(groups, lr=1.5e-4, betas=(0.9, 0.95), fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    flops = count_flops(make_step(model, optimizer, imgs, precision, scaler))
    runner = torch.compile(model) if compile_model else model
    step = make_step(runner, optimizer, imgs, precision, scaler)
    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        sync(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    result = {
        "precision": precision,
        "compile": compile_model,
        "step_ms": step_s * 1e3,
        "images_per_s": args.batch_size / step_s,
        "flops_per_step": flops,
        "achieved_tflops": flops / step_s / 1e12,
        "loss": loss.item(),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def describe(args, r: dict) -> str:
    device = torch.device(args.device)
    lines = [
        f"  step {r['step_ms']:.1f} ms (median of {args.steps})   throughput {r['images_per_s']:.1f} images/s"
        + (f"   peak memory {r['max_memory_gib']:.1f} GiB" if "max_memory_gib" in r else ""),
        f"  model FLOPs {r['flops_per_step'] / 1e12:.3f} TFLOP/step ({r['flops_per_step'] / args.batch_size / 1e9:.1f}"
        f" GFLOP/image, fwd+bwd)   achieved {r['achieved_tflops']:.2f} TFLOP/s",
    ]
    peak = (args.peak_tflops, "--peak-tflops") if args.peak_tflops else peak_tflops(device, r["precision"])
    if peak:
        lines.append(
            f"  MFU {100 * r['achieved_tflops'] / peak[0]:.1f}% of {peak[0]:.1f} TFLOP/s ({peak[1]})"
        )
    else:
        lines.append("  MFU n/a: peak FLOP/s of this device unknown (give --peak-tflops)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit_base_patch16", choices=list_archs())
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--precision", choices=PRECISIONS, default=None, help="default: bf16 on GPU, fp32 on CPU"
    )
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--baseline", action="store_true", help="also run fp32 eager and print the ratio")
    parser.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU if not known")
    args = parser.parse_args(argv)
    precision = args.precision or ("bf16" if torch.device(args.device).type == "cuda" else "fp32")
    device = torch.device(args.device)
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"{args.arch}  img {args.img_size}  batch {args.batch_size}  mask_ratio {args.mask_ratio}  "
        f"device {name}  torch {torch.__version__}"
    )
    result = run(args, precision, args.compile)
    print(f"{precision}{' + torch.compile' if args.compile else ''}  ({result['params_m']:.1f} M parameters)")
    print(describe(args, result))
    if args.baseline and (precision != "fp32" or args.compile):
        base = run(args, "fp32", False)
        print("fp32 eager (baseline)")
        print(describe(args, base))
        print(f"speed vs baseline: {result['images_per_s'] / base['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()

"""onnxruntime vs PyTorch eager on CPU: latency and throughput of one exported classifier, as ratios from one run.

    python benchmarks/bench_onnx.py                                   # vit_tiny_patch16 and convnextv2_atto, 224 px
    python benchmarks/bench_onnx.py --arch vit_base_patch16 --batches 1 32 --iters 20

Each arch is built with random weights (speed does not depend on them), exported with the product's exporter
(`mae.deploy.onnx_export.export_network`: opset 17, dynamic batch, parity-checked), then timed on the same
synthetic batch in the same process: PyTorch eager under `torch.inference_mode()` and onnxruntime's CPU provider
with its default graph optimisations. Both use the same number of threads: torch.get_num_threads() (every
core by default) or --threads. On a loaded machine use --threads 1: PyTorch's thread pool slows down badly
when its threads must share cores with other processes, which distorts the ratio. For each batch size the
two runtimes alternate, `--warmup` untimed calls, then `--iters` timed ones each; latency is the median,
throughput = batch / median latency. Ratios are PyTorch time / onnxruntime time (> 1: onnxruntime is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from mae.deploy.onnx_export import export_network  # noqa: E402
from mae.models import build_classifier, list_archs  # noqa: E402


def seconds(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def bench_arch(
    arch: str, img_size: int, batches: list[int], warmup: int, iters: int, num_classes: int
) -> list[dict]:
    import onnxruntime as ort

    torch.manual_seed(0)
    net = build_classifier(arch, num_classes, img_size=img_size, drop_path_rate=0.0).eval()
    with tempfile.TemporaryDirectory() as d:
        r = export_network(net, Path(d) / "m.onnx", input_shape=(3, img_size, img_size))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()  # the same thread count as PyTorch
        sess = ort.InferenceSession(str(r.path), opts, providers=["CPUExecutionProvider"])
    rows = []
    for b in batches:
        x = torch.randn(b, 3, img_size, img_size)
        feed = {"input": x.numpy()}

        def run_torch(x):
            with torch.inference_mode():
                net(x)

        t_torch, t_ort = [], []
        for i in range(warmup + iters):  # alternate the runtimes so both see the same machine state
            tt, to = seconds(run_torch, x), seconds(sess.run, ["output"], feed)
            if i >= warmup:
                t_torch.append(tt)
                t_ort.append(to)
        lt, lo = statistics.median(t_torch), statistics.median(t_ort)
        rows.append(
            {
                "arch": arch,
                "batch": b,
                "torch_ms": lt * 1e3,
                "ort_ms": lo * 1e3,
                "torch_ips": b / lt,
                "ort_ips": b / lo,
                "speedup": lt / lo,
                "parity": r.max_abs_diff,
            }
        )
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=["vit_tiny_patch16", "convnextv2_atto"], choices=list_archs())
    p.add_argument("--img-size", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="threads for both runtimes (default: torch's)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import onnxruntime as ort

    print(
        f"CPU, torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}; "
        f"{a.img_size} px, median of {a.iters} after {a.warmup} warm-up calls"
    )
    print(
        f"{'arch':<18} {'batch':>5} {'torch ms':>9} {'ort ms':>9} {'torch img/s':>12} {'ort img/s':>10} "
        f"{'ort speedup':>11}"
    )
    for arch in a.arch:
        for r in bench_arch(arch, a.img_size, a.batches, a.warmup, a.iters, a.num_classes):
            print(
                f"{r['arch']:<18} {r['batch']:>5} {r['torch_ms']:>9.2f} {r['ort_ms']:>9.2f} {r['torch_ips']:>12.1f} "
                f"{r['ort_ips']:>10.1f} {r['speedup']:>10.2f}x"
            )
    print(
        "ort speedup = PyTorch eager latency / onnxruntime latency (same for throughput); > 1: onnxruntime faster"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Figures of the multi-objective benchmark, from its records (benchmarks.multi_objective.harness.record_of).

The hypervolume is the area dominated by the feasible trials' (ACC_all, latency_ms) points, bounded by one
reference point for every run: ACC_all 0 and latency_ms = X, the limit. Its anytime curve is the hypervolume
after each trial-epoch trained, in the order the results arrived; a configuration refused before training
costs no trial-epoch. A search that ends with fewer trial-epochs keeps its final value past its end (it has
spent less, and a front never shrinks).

(a) median hypervolume curve per arm with its interquartile band (PNG, left), and the final fronts (right)
(b) final hypervolume: seeds where ours >= each weighted arm
(c) hypervolume at equal trial-epochs (the shorter search's length, per seed): seeds where ours >= the other
(d) trial-epochs for ours to reach the other arm's final hypervolume (median over seeds; inf: never)
(e) infeasible configurations proposed (refused before training, never trained) per arm
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def hv_curve(points: Sequence[tuple[float | None, float | None]], limit: float) -> list[float]:
    """Hypervolume after each (ACC_all, latency_ms) result, reference (0, limit); results missing a value or
    over the limit add nothing. Non-decreasing by construction."""
    from automl.pareto import hypervolume

    kept: list[tuple[float, float]] = []  # minimisation form: (-ACC_all, latency_ms)
    curve, hv = [], 0.0
    for acc, lat in points:
        if acc is not None and lat is not None and lat <= limit:
            kept.append((-acc, lat))
            hv = hypervolume(np.asarray(kept, dtype=float), [0.0, limit])
        curve.append(hv)
    return curve


def held(curve: Sequence[float], n: int) -> float:
    """The curve after n trial-epochs (0 before any, its last value past its end)."""
    if n <= 0 or not curve:
        return 0.0
    return float(curve[min(n, len(curve)) - 1])


def epochs_to(curve: Sequence[float], target: float, tol: float = 1e-12) -> float:
    """Trial-epochs until the curve first reaches `target` (0 for a target of 0, inf when never)."""
    if target <= tol:
        return 0.0
    for i, v in enumerate(curve, start=1):
        if v >= target - tol:
            return float(i)
    return math.inf


def median(values: Sequence[float | None]) -> float | None:
    """Median, an infinite value counting as the largest (a target never reached)."""
    v = [x for x in values if x is not None and not math.isnan(x)]
    return float(statistics.median(v)) if v else None


def quartiles(values: Sequence[float]) -> list[float] | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return [float(np.percentile(v, q)) for q in (25, 50, 75)] if v else None


def _paired(runs: dict[str, list[dict]], a: str, b: str) -> list[tuple[dict, dict]]:
    by_seed = {r["seed"]: r for r in runs.get(b, [])}
    return [(r, by_seed[r["seed"]]) for r in runs.get(a, []) if r["seed"] in by_seed]


def compare(runs: dict[str, list[dict]], other: str, base: str = "ours") -> dict[str, Any]:
    """Figures (b), (c), (d) of `base` against `other`, per seed and over seeds."""
    per_seed = []
    for rb, ro in _paired(runs, base, other):
        n = min(rb["trial_epochs"], ro["trial_epochs"])
        eq_b, eq_o = held(rb["curve"], n), held(ro["curve"], n)
        per_seed.append(
            {
                "seed": rb["seed"],
                f"{base}_final_hv": rb["final_hv"],
                f"{other}_final_hv": ro["final_hv"],
                "equal_trial_epochs": n,
                f"{base}_hv_at_equal": eq_b,
                f"{other}_hv_at_equal": eq_o,
                f"{base}_epochs_to_{other}_final": epochs_to(rb["curve"], ro["final_hv"]),
                f"{other}_epochs_to_own_final": epochs_to(ro["curve"], ro["final_hv"]),
            }
        )
    k = len(per_seed)
    final_ge = sum(p[f"{base}_final_hv"] >= p[f"{other}_final_hv"] for p in per_seed)
    equal_ge = sum(p[f"{base}_hv_at_equal"] >= p[f"{other}_hv_at_equal"] for p in per_seed)
    return {
        "per_seed": per_seed,
        f"{base}_final_ge": f"{final_ge} of {k}",
        f"{base}_ge_at_equal_trial_epochs": f"{equal_ge} of {k}",
        f"median_{base}_epochs_to_{other}_final": median(
            [p[f"{base}_epochs_to_{other}_final"] for p in per_seed]
        ),
        f"median_{other}_epochs_to_own_final": median([p[f"{other}_epochs_to_own_final"] for p in per_seed]),
    }


def median_curves(runs: dict[str, list[dict]]) -> dict[str, dict[str, list[float]]]:
    """Per arm: the 25th, 50th and 75th percentile over seeds of the hypervolume after 1..N trial-epochs
    (N: the arm's longest search; shorter ones held at their final value)."""
    out = {}
    for arm, rs in runs.items():
        n = max((len(r["curve"]) for r in rs), default=0)
        if n == 0:
            continue
        m = np.array([[held(r["curve"], i) for i in range(1, n + 1)] for r in rs], dtype=float)
        q25, q50, q75 = (np.percentile(m, q, axis=0) for q in (25, 50, 75))
        out[arm] = {"q25": q25.tolist(), "median": q50.tolist(), "q75": q75.tolist()}
    return out


def median_curve_share(curves: dict[str, dict[str, list[float]]], other: str, base: str = "ours") -> str:
    """At how many trial-epochs (1..the shorter of the two median curves) ours' median >= the other's."""
    if base not in curves or other not in curves:
        return "0 of 0"
    a, b = curves[base]["median"], curves[other]["median"]
    n = min(len(a), len(b))
    return f"{sum(a[i] >= b[i] for i in range(n))} of {n}"


def infeasible(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Figure (e): configurations each arm proposed that the limit refused before training."""
    out = {}
    for arm, rs in runs.items():
        counts = [r["infeasible"] for r in rs]
        proposed = sum(r["trials_proposed"] for r in rs)
        out[arm] = {
            "per_seed": counts,
            "total": sum(counts),
            "median": median(counts),
            "share_of_proposed": round(sum(counts) / proposed, 3) if proposed else None,
        }
    return out


def per_arm(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """Final hypervolume and trial-epochs per arm: per seed and quartiles."""
    return {
        arm: {
            "final_hv": [r["final_hv"] for r in rs],
            "final_hv_quartiles": quartiles([r["final_hv"] for r in rs]),
            "trial_epochs": [r["trial_epochs"] for r in rs],
            "front_sizes": [len(r["front"]) for r in rs],
            "wall_s": [r["wall_s"] for r in rs],
        }
        for arm, rs in runs.items()
    }


def plot(runs: dict[str, list[dict]], path: Path, title: str, limit: float) -> None:
    """Left: median hypervolume per trial-epoch with the interquartile band, one line per arm. Right: every
    seed's final feasible front, one colour per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = median_curves(runs)
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 4.6))
    for i, (arm, c) in enumerate(curves.items()):
        color = f"C{i}"
        x = np.arange(1, len(c["median"]) + 1)
        ax.plot(x, c["median"], color=color, label=f"{arm} ({len(runs[arm])} seeds)")
        ax.fill_between(x, c["q25"], c["q75"], color=color, alpha=0.2)
        first = True
        for r in runs[arm]:
            pts = sorted((p["latency_ms"], p["ACC_all"]) for p in r["front"] if p.get("ACC_all") is not None)
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax2.step(xs, ys, where="post", color=color, alpha=0.5, label=arm if first else None)
                ax2.scatter(xs, ys, color=color, s=12)
                first = False
    ax.set_xlabel("trial-epochs trained")
    ax.set_ylabel(f"hypervolume (ref: ACC_all 0, latency {limit:g} ms)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax2.axvline(limit, color="k", ls="--", lw=0.8, label=f"limit {limit:g} ms")
    ax2.set_xlabel("latency_ms (onnxruntime CPU, batch 1)")
    ax2.set_ylabel("ACC_all (validation)")
    ax2.set_title("final feasible fronts, every seed", fontsize=10)
    ax2.grid(alpha=0.3)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)

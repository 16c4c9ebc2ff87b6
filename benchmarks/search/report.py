"""Figures from the benchmark's records: medians over seeds with bootstrap 95% intervals, and the PNG.

(a) trial-epochs until an arm first reaches the TAO arm's final best, as a ratio arm / TAO per seed
(b) best train_loss at equal trial-epochs (the shorter of the two curves), arm vs ours: seeds ours wins
(c) median best-so-far curves with interquartile bands, one line per arm (PNG)
(d) finetune top-1 of each arm's selected encoder: median, the bootstrap interval of ours minus each
    other arm (paired by seed), and seeds where ours >= the other arm
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def bootstrap_median(values: Sequence[float], *, n: int = 10_000, seed: int = 0) -> list[float] | None:
    """95% percentile-bootstrap interval of the median (None when there is nothing to resample)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) < 2:
        return None
    rng = np.random.default_rng(seed)
    meds = np.median(v[rng.integers(0, len(v), size=(n, len(v)))], axis=1)
    return [float(np.percentile(meds, 2.5)), float(np.percentile(meds, 97.5))]


def median(values: Sequence[float | None]) -> float | None:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return statistics.median(v) if v else None


def epochs_to(curve: Sequence[float | None], target: float | None) -> float:
    """Trial-epochs until the curve first reaches `target` (inf when it never does)."""
    if target is None:
        return math.inf
    for i, best in enumerate(curve, start=1):
        if best is not None and best <= target:
            return float(i)
    return math.inf


def at_equal_epochs(
    a: Sequence[float | None], b: Sequence[float | None]
) -> tuple[float | None, float | None]:
    """Both curves' best after the same number of trial-epochs (the shorter curve's length)."""
    n = min(len(a), len(b))
    if n == 0:
        return None, None
    return a[n - 1], b[n - 1]


def time_to_tao(runs: dict[str, list[dict]], arm: str) -> dict[str, Any]:
    """Figure (a) for one arm: per seed, trial-epochs to TAO's final best (inf: never) and the ratio arm/TAO;
    the median ratio over seeds, counting a never-reached target as an infinite ratio, with its interval."""
    per_seed = []
    for r_arm, r_tao in _paired(runs, arm, "tao"):
        target = r_tao["best"]
        e_arm, e_tao = epochs_to(r_arm["curve"], target), epochs_to(r_tao["curve"], target)
        ratio = e_arm / e_tao if math.isfinite(e_tao) else None
        per_seed.append(
            {"seed": r_arm["seed"], "target": target, "epochs": e_arm, "tao_epochs": e_tao, "ratio": ratio}
        )
    ratios = [p["ratio"] for p in per_seed if p["ratio"] is not None]
    finite_ratios = [x for x in ratios if math.isfinite(x)]
    med = statistics.median(ratios) if ratios else None
    return {
        "per_seed": per_seed,
        "median_ratio": med,
        "ci95": _bootstrap_with_inf(ratios),
        "reached": f"{len(finite_ratios)} of {len(per_seed)}",
    }


def _bootstrap_with_inf(values: Sequence[float], n: int = 10_000) -> list[float] | None:
    """Bootstrap of a median that may be infinite (a target never reached): inf is a valid order statistic."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return None
    rng = np.random.default_rng(0)
    meds = np.sort(v[rng.integers(0, len(v), size=(n, len(v)))], axis=1)[:, (len(v) - 1) // 2]  # lower median
    return [
        float(np.percentile(meds, 2.5, method="nearest")),
        float(np.percentile(meds, 97.5, method="nearest")),
    ]


def equal_epochs(runs: dict[str, list[dict]], arm: str, base: str = "ours") -> dict[str, Any]:
    """Figure (b): best train_loss of `base` and `arm` after the same trial-epochs; seeds `base` wins."""
    per_seed, wins = [], 0
    for r_base, r_arm in _paired(runs, base, arm):
        a, b = at_equal_epochs(r_base["curve"], r_arm["curve"])
        won = a is not None and (b is None or a < b)
        wins += won
        per_seed.append(
            {
                "seed": r_base["seed"],
                base: a,
                arm: b,
                "trial_epochs": min(len(r_base["curve"]), len(r_arm["curve"])),
            }
        )
    return {"per_seed": per_seed, f"{base}_wins": f"{wins} of {len(per_seed)}"}


DOWNSTREAM = {
    "finetune_top1": ("finetune", "top1"),  # the fixed finetune recipe, top-1 on the test split
    "probe_top1": ("probe", "probe_top1"),  # linear probe fitted on the train split, top-1 on the test split
    "val_probe_top1": ("probe", "val_probe_top1"),  # linear probe, 5-fold CV inside the val split
}


def downstream(runs: dict[str, list[dict]], arms: Sequence[str], base: str = "ours") -> dict[str, Any]:
    """Figure (d): the selected encoders' test top-1 per arm (finetune, and the linear probes) and knn_acc,
    and ours minus each other arm, paired by seed, with its bootstrap interval and the seeds ours >= it."""
    out: dict[str, Any] = {"per_arm": {}, "vs": {}}
    for arm in arms:
        rs = runs.get(arm, [])
        d: dict[str, Any] = {"knn_acc": [(r.get("selected") or {}).get("knn_acc") for r in rs]}
        d["median_knn_acc"] = median(d["knn_acc"])
        for name in DOWNSTREAM:
            vals = [_value(r, name) for r in rs]
            d[name] = vals
            d[f"median_{name}"] = median(vals)
            d[f"ci95_{name}"] = bootstrap_median([x for x in vals if x is not None])
        out["per_arm"][arm] = d
    for arm in arms:
        if arm == base:
            continue
        vs: dict[str, Any] = {}
        for name in DOWNSTREAM:
            diffs = []
            for r_base, r_arm in _paired(runs, base, arm):
                a, b = _value(r_base, name), _value(r_arm, name)
                if a is not None and b is not None:
                    diffs.append(a - b)
            ties = sum(d == 0 for d in diffs)  # the same encoder selected (e.g. a shared start-up trial)
            vs[name] = {
                "diff": diffs,
                "median_diff": median(diffs),
                "ci95": bootstrap_median(diffs),
                f"{base}_ge": f"{sum(d >= 0 for d in diffs)} of {len(diffs)}",
                f"{base}_wins_ties_losses": [sum(d > 0 for d in diffs), ties, sum(d < 0 for d in diffs)],
            }
        out["vs"][arm] = vs
    return out


def candidates_vs(runs: dict[str, list[dict]], arms: Sequence[str]) -> dict[str, Any]:
    """Each candidate default (an arm named cand-*) against every other arm: downstream's pairwise figures."""
    return {c: downstream(runs, arms, base=c)["vs"] for c in arms if c.startswith("cand-")}


def selected_correlations(runs: dict[str, list[dict]], target: str = "finetune_top1") -> dict[str, Any]:
    """Spearman of each selected encoder's train_loss, knn_acc, probes and learning rate with its `target`,
    over the distinct encoders the searches selected (one per configuration and seed: two arms that select
    the same start-up trial count once), for every arm and for our curated space only (TAO's arm left out)."""
    from benchmarks.search.correlation import spearman

    rows = distinct_selected(runs, target)
    measures = {
        "train_loss": lambda x: x["sel"].get("train_loss"),
        "knn_acc": lambda x: x["sel"].get("knn_acc"),
        "probe_top1": lambda x: _value(x["r"], "probe_top1"),
        "val_probe_top1": lambda x: _value(x["r"], "val_probe_top1"),
        "lr": lambda x: (x["sel"].get("config") or {}).get("train.optim.lr"),
    }
    out: dict[str, Any] = {}
    for scope, pool in (("all_arms", rows), ("our_space", [x for x in rows if x["arm"] != "tao"])):
        y = [_value(x["r"], target) for x in pool]
        out[scope] = {name: spearman([f(x) for x in pool], y) for name, f in measures.items()}
    return out


def distinct_selected(runs: dict[str, list[dict]], target: str = "finetune_top1") -> list[dict]:
    """The encoders the searches selected that have a `target` figure, each (seed, configuration) once:
    {"arm", "sel" (the selected trial), "r" (its run)}, the first arm that selected it named."""
    rows: dict[tuple, dict] = {}
    for arm, rs in runs.items():
        for r in rs:
            sel = r.get("selected")
            if sel is None or _value(r, target) is None:
                continue
            key = (r["seed"], json.dumps(sel.get("config"), sort_keys=True, default=str))
            rows.setdefault(key, {"arm": arm, "sel": sel, "r": r})
    return list(rows.values())


def _value(r: dict, name: str) -> float | None:
    """A downstream figure of the selected encoder; a search that selected none (every trial failed) hands
    over nothing, so the user's classifier is at chance: 0.1 on ten balanced classes."""
    if r.get("selected") is None:
        return 0.1
    section, key = DOWNSTREAM[name]
    return (r.get(section) or {}).get(key)


def _paired(runs: dict[str, list[dict]], a: str, b: str) -> list[tuple[dict, dict]]:
    by_seed = {r["seed"]: r for r in runs.get(b, [])}
    return [(r, by_seed[r["seed"]]) for r in runs.get(a, []) if r["seed"] in by_seed]


def plot_curves(runs: dict[str, list[dict]], path: Path, title: str) -> None:
    """Figure (c): median best-so-far train_loss per trial-epoch, interquartile band, one line per arm.
    A seed's curve is carried flat past its end (a search that stopped early has spent less)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for arm, rs in runs.items():
        curves = [r["curve"] for r in rs if r["curve"]]
        if not curves:
            continue
        n = max(len(c) for c in curves)
        m = np.full((len(curves), n), np.nan)
        for i, c in enumerate(curves):
            vals = [np.nan if x is None else x for x in c]
            vals += [vals[-1]] * (n - len(vals))
            m[i] = vals
        x = np.arange(1, n + 1)
        with np.errstate(all="ignore"):
            lo, med, hi = (np.nanpercentile(m, q, axis=0) for q in (25, 50, 75))
        ax.plot(x, med, label=f"{arm} ({len(curves)} seeds)")
        ax.fill_between(x, lo, hi, alpha=0.2)
    ax.set_xlabel("trial-epochs spent")
    ax.set_ylabel("best train_loss so far (median, IQR band)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_report(text: str) -> tuple[str, dict[str, str]]:
    """'PATH' or 'PATH:ours=ours-v1,random=random-v1' -> (PATH, {name in the report: name here})."""
    path, sep, renames = text.partition(":")
    pairs = [r.partition("=") for r in renames.split(",")] if sep else []
    return path, {old.strip(): new.strip() for old, _, new in pairs}


def arm_sources(reports: list[tuple[str, dict[str, str]]]) -> dict[str, tuple[str, list, dict, str]]:
    """name -> (the arm's name in its report, its runs, the report, the report's path); the first report wins."""
    out: dict[str, tuple[str, list, dict, str]] = {}
    for path, renames in reports:
        data = json.loads(Path(path).read_text())
        for arm, runs in data["runs"].items():
            out.setdefault(renames.get(arm, arm), (arm, runs, data, path))
    return out


def repo_relative(path: str | Path) -> str:
    """A path as the committed JSON records it: relative to the repository when inside it."""
    p = Path(path).resolve()
    repo = Path(__file__).resolve().parents[2]
    return str(p.relative_to(repo) if p.is_relative_to(repo) else p)


def strict_json(x):
    """Strict JSON of a benchmark's figures: a count never reached (infinite) is written "inf"."""
    if isinstance(x, float) and not math.isfinite(x):
        return "inf" if x > 0 else ("-inf" if x < 0 else None)
    if isinstance(x, dict):
        return {k: strict_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [strict_json(v) for v in x]
    return x

"""One search of the multi-objective benchmark through the public API, and what the benchmark keeps of it.

Every arm gets the same finetune spec (SPEC: digits, finetuning from scratch, ViT micro with 4-px patches at
32 px; the product searches model.arch among ViT micro/tiny/small at 4-px patches and the input size among
16/24/32 px), the same objectives (ACC_all:max on the validation split, latency_ms:min), the same latency
limit, max_trials, num_epochs, max_concurrent and seed. Only how the objectives are searched differs:

  ours        --objective ACC_all:max --objective latency_ms:min: MOTPE + MO-ASHA, feasibility first
  weighted-*  the same plus --objective-weights 1 w (TAO's way): TPE + ASHA on one scalar
              weighted_score = ACC_all - w * latency_ms

The deploy profile (latency per model shape) is measured once per benchmark, before any search, and copied into
every search's results folder, so that all arms and seeds see the same latencies and no search measures again
(the machine is shared: a second measurement would differ). The limit X is placed between two measured
shapes (`latency_limit`), so that the slower shapes are infeasible.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.search.harness import finished, finite
from mae.layout import ExperimentLayout

REPO = Path(__file__).resolve().parents[2]
PROFILE_FILE = (
    "deploy_profile.json"  # automl's per-experiment cache, <results_dir>/automl/deploy_profile.json
)
OBJECTIVES = ("ACC_all:max", "latency_ms:min")
RUN_FILE = "bench_run.json"  # in a run's folder: the product's code version

# Finetuning from scratch (no train.pretrained_model_path), so that the architecture can be searched. Batch 32:
# 38 steps an epoch on the ~1,200 training digits, so that a few epochs separate good settings from bad ones.
SPEC = """\
# Multi-objective benchmark (benchmarks/multi_objective): finetuning a ViT from scratch on 32x32 digits.
model_name: mae_digits_mo
dataset:
  batch_size: 32
  num_workers_per_gpu: 0    # trials share two CPU cores: no loader processes
  train_data_sources: ???
  val_data_sources: ???
  augmentation:
    input_size: 32
    min_scale: 0.5
    max_scale: 1.0
    hflip: 0.0              # digits are not mirror-symmetric
    auto_aug: null
    mixup: 0.0
    cutmix: 0.0
model:
  arch: vit_micro_patch4
  num_classes: 10
train:
  stage: finetune
  num_epochs: 4
"""


# --recipe fixed: the from-scratch recipe of tests/test_automl_multi_objective.py pinned by overrides, so that
# what is searched is the architecture, the input size, weight decay and the schedule: the front then shows
# the accuracy/latency trade-off of the shapes instead of which arm drew a learning rate that trains at all
# in 4 epochs (the finetune space's ranges are for pretrained encoders).
FIXED_RECIPE = (
    "train.optim.lr=2e-3",
    "train.optim.layer_decay=1.0",
    "train.optim.warmup_epochs=0",
    "dataset.augmentation.mixup=0",
    "dataset.augmentation.smoothing=0",
    "model.drop_path_rate=0",
)


@dataclass(frozen=True)
class Budget:
    trials: int
    epochs: int
    concurrent: int = 2


@dataclass(frozen=True)
class Arm:
    name: str
    description: str
    latency_weight: float | None = None  # weighted arms: w per ms of latency, in units of 1/X (X: the limit)

    def weights(self, limit: float) -> tuple[float, ...]:
        """--objective-weights for this arm under the latency limit X (none for the multi-objective arm)."""
        return () if self.latency_weight is None else (1.0, self.latency_weight / limit)


# Weights for TAO's way. Both objectives are first put on the scale of the hypervolume's box: accuracy in
# [0, 1], latency in [0, X]. "balanced" weighs them equally there (the whole latency budget is worth the
# whole accuracy range: w = 1/X per ms); "accuracy" leans on accuracy (the budget is worth 0.25 of accuracy,
# w = 0.25/X), closer to what a user who names accuracy first would pick. Neither starves an objective.
ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("ours", "multi-objective: MOTPE + MO-ASHA, feasibility first"),
        Arm(
            "weighted-balanced",
            "TAO's way: TPE + ASHA on ACC_all - (1/X) * latency_ms (equal weights on the box [0, 1] x [0, X])",
            latency_weight=1.0,
        ),
        Arm(
            "weighted-accuracy",
            "TAO's way: TPE + ASHA on ACC_all - (0.25/X) * latency_ms (the latency budget worth 0.25 accuracy)",
            latency_weight=0.25,
        ),
    )
}


def write_spec(root: Path) -> Path:
    path = root / "spec.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(SPEC)
    return path


def data_overrides(data: dict[str, Path]) -> list[str]:
    return [f"dataset.train_data_sources={data['train']}", f"dataset.val_data_sources={data['val']}"]


def measure_profile(spec: Path, data: dict[str, Path], root: Path, pins: list[str]) -> dict[str, dict]:
    """Every shape's deploy metrics, measured once into root/deploy_profile.json (read back when there) by
    the product's own code, from the plan the arms will search."""
    from automl.multi_objective import profile_shapes
    from automl.plan import plan_search

    plan = plan_search(
        spec, [f"results_dir={root / 'profile'}", *data_overrides(data), *pins], objectives=OBJECTIVES
    )
    return profile_shapes(plan.goals, plan, root / PROFILE_FILE)


def latency_limit(profile: dict[str, dict], feasible_shapes: int) -> float:
    """X between the `feasible_shapes`-th and the next fastest shape (their geometric mean, 3 significant
    digits): that many shapes are feasible, the slower ones are not."""
    lat = sorted(float(m["latency_ms"]) for m in profile.values())
    if not 0 < feasible_shapes < len(lat):
        raise ValueError(f"--feasible-shapes {feasible_shapes}: must be in [1, {len(lat) - 1}]")
    a, b = lat[feasible_shapes - 1], lat[feasible_shapes]
    x = float(f"{math.sqrt(a * b):.3g}")
    return x if a <= x < b else (a + b) / 2


def check_root(root: Path, settings: dict[str, Any]) -> None:
    """The runs folder belongs to one budget, limit and set of pins: its finished searches are read back, so
    a folder of another benchmark (e.g. --quick's) would mix budgets. Recorded on first use, refused after."""
    from mae.errors import ConfigError
    from mae.fileio import atomic_write_json

    path = root / "benchmark.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before != settings:
            raise ConfigError(
                f"{root} holds runs of another benchmark ({before}, not {settings}); give another --out"
            )
        return
    atomic_write_json(path, settings)


def run_search(
    arm: Arm,
    seed: int,
    budget: Budget,
    spec: Path,
    data: dict[str, Path],
    out: Path,
    *,
    limit: float,
    profile_file: Path,
    pins: list[str],
) -> dict[str, Any]:
    """One search (read back when `out` holds a finished one); returns its record (`record_of`)."""
    import automl
    from mae.fileio import atomic_write_json

    weights = arm.weights(limit)
    options: dict[str, Any] = {
        "objectives": OBJECTIVES,
        "constraints": (f"latency_ms<={limit:g}",),
        **({"objective_weights": weights} if weights else {}),
        "max_trials": budget.trials,
        "max_concurrent": budget.concurrent,
        "seed": seed,
        "deploy": False,  # no ONNX export of the results: the front's values are what is compared
        "max_consecutive_failures": 0,
        "progress_interval_s": 1e9,
    }
    overrides = [f"results_dir={out}", *data_overrides(data), f"train.num_epochs={budget.epochs}", *pins]
    if not finished(out):
        cache = ExperimentLayout(out).deploy_profile
        cache.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(profile_file, cache)  # the shared measurement: the runner reads it, measures nothing
        code = code_fingerprint()
        automl.run(str(spec), overrides, automl.SearchOptions(**options))
        atomic_write_json(out / RUN_FILE, {"automl_code": code})
    rec = record_of(out, limit)
    meta = json.loads((out / RUN_FILE).read_text()) if (out / RUN_FILE).exists() else {}
    rec["automl_code"] = meta.get("automl_code")
    rec.update(arm=arm.name, seed=seed, options=_plain(options))
    return rec


def code_fingerprint() -> str:
    """A short hash of automl/*.py as the search starts: runs of one benchmark should share it (the product is
    edited while benchmarks run; a mix is reported)."""
    import hashlib

    h = hashlib.sha256()
    for path in sorted((REPO / "automl").glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:12]


def _plain(options: dict[str, Any]) -> dict[str, Any]:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in options.items() if k != "progress_interval_s"
    }


@dataclass
class Event:
    """One trial-epoch's result, in the order results arrived (state.json's `seq`)."""

    seq: int
    trial_id: str
    acc: float | None
    latency_ms: float | None


def record_of(out: Path, limit: float) -> dict[str, Any]:
    """What the benchmark keeps of a finished search: every trained trial-epoch's (ACC_all, latency_ms) in
    arrival order (the anytime hypervolume is computed from these), every trial's shape, status and best
    accuracy, the infeasible configurations (refused before training), and the product's own summary figures."""
    from benchmarks.multi_objective.report import hv_curve

    files = ExperimentLayout(out)
    state, summary = files.read("state"), files.read("summary")
    events: list[Event] = []
    trials = []
    for tid, t in state["trials"].items():
        hist = {int(k): v for k, v in (t.get("history") or {}).items()}
        for h in hist.values():
            if "seq" in h:  # a trial refused before training has no history: it cost no trial-epoch
                events.append(
                    Event(int(h["seq"]), tid, finite(h.get("ACC_all")), finite(h.get("latency_ms")))
                )
        cfg = t.get("config") or {}
        accs = [a for a in (finite(hist[e].get("ACC_all")) for e in sorted(hist)) if a is not None]
        deploy = t.get("deploy") or {}
        lat = next((finite(h.get("latency_ms")) for h in hist.values() if "latency_ms" in h), None)
        trials.append(
            {
                "trial_id": tid,
                "status": t.get("status"),
                "arch": cfg.get("model.arch"),
                "input_size": cfg.get("dataset.augmentation.input_size"),
                "epochs": len(hist),
                "best_acc": max(accs) if accs else None,
                "latency_ms": lat if lat is not None else finite(deploy.get("latency_ms")),
                "infeasible": t.get("infeasible"),
            }
        )
    # proposals refused before they became trials (the product's feasibility check at proposal time)
    refused = summary.get("refused")
    if refused is None and files.refused.exists():
        refused = json.loads(files.refused.read_text())
    refused = refused or []
    events.sort(key=lambda e: e.seq)
    curve = hv_curve([(e.acc, e.latency_ms) for e in events], limit)
    return {
        "results_dir": str(out),
        "wall_s": summary.get("elapsed_s"),
        "limit_ms": limit,
        "curve": curve,
        "final_hv": curve[-1] if curve else 0.0,
        "summary_hv": summary.get("hypervolume"),
        "trial_epochs": len(events),
        "trials_proposed": len(trials) + len(refused),
        "infeasible": sum(t["status"] == "infeasible" for t in trials) + len(refused),
        "refused_shapes": sorted(
            {
                f"{(r.get('config') or {}).get('model.arch')}@{(r.get('config') or {}).get('dataset.augmentation.input_size')}"
                for r in refused
            }
        ),
        "failed": sum(t["status"] == "failed" for t in trials),
        "front": [
            {"trial_id": p["trial_id"], **{k: p["values"].get(k) for k in ("ACC_all", "latency_ms")}}
            for p in summary.get("pareto") or []
        ],
        "trials": trials,
    }

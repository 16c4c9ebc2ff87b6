"""After the search: the best trial's best epoch -> `best/` (spec, checkpoint, ONNX, TensorRT engine).

    <results_dir>/automl/best/
      spec.yaml           the best trial's spec, fully resolved: `mae train -e best/spec.yaml` retrains it
      best.ckpt           the checkpoint of the best trial's best epoch (by the search metric)
      <model_name>.onnx   exported with `mae export` (checked against PyTorch with onnxruntime)
      <model_name>.engine built with `mae gen_trt_engine` where TensorRT and a GPU are present
      best.json           which trial and epoch, the metric, the configuration, and what was skipped and why

The checkpoint comes from the trial's Tune checkpoint of that epoch (local or on S3, so it works when the trial
ran on another node), or, failing that, from the trial's own training folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from automl.trial import CHECKPOINT_FILE, TrialContext, build_trial_spec, trial_values
from mae.errors import MAEError, MissingDependencyError
from mae.fileio import atomic_write_json, atomic_write_text
from mae.layout import BEST_CKPT, TrainLayout

log = logging.getLogger("automl")


def fetch_checkpoint(
    tune_checkpoint: str | None, target: Path, *, filesystem: Any = None, fallback: Path | None = None
) -> Path:
    """Copy the Lightning checkpoint inside a Tune checkpoint folder (local path, or a path on `filesystem`)
    to `target`; else `fallback` (the trial folder's best.ckpt)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if tune_checkpoint:
        local = Path(tune_checkpoint) / CHECKPOINT_FILE
        if filesystem is None and local.is_file():
            shutil.copyfile(local, target)
            return target
        if filesystem is not None:
            from ray.tune import Checkpoint

            with tempfile.TemporaryDirectory(prefix="automl-best-") as tmp:
                path = (
                    tune_checkpoint[len("s3://") :]
                    if tune_checkpoint.startswith("s3://")
                    else tune_checkpoint
                )
                Checkpoint(path=path, filesystem=filesystem).to_directory(tmp)
                src = Path(tmp) / CHECKPOINT_FILE
                if src.is_file():
                    shutil.copyfile(src, target)
                    return target
    if fallback is not None and fallback.is_file():
        shutil.copyfile(fallback, target)
        return target
    raise MAEError(
        f"the best checkpoint is gone ({tune_checkpoint or 'no Tune checkpoint'}"
        + (f", {fallback}" if fallback else "")
        + "); rerun the search or export a trial's checkpoint yourself"
    )


def deploy_best(
    files,
    best: Mapping[str, Any],
    ctx: TrialContext,
    *,
    storage_filesystem: Any = None,
    out_dir: Path | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Write best/ (or `out_dir`, e.g. best/pareto/<trial_id>/) for a trial record of the experiment's
    state.json; returns what was written and what was skipped (each skipped step with its reason)."""
    from mae.spec import dump_spec

    out_dir = Path(out_dir) if out_dir is not None else files.best
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    trial_id = best["trial_id"]
    b = best["best"]
    result: dict[str, Any] = {
        "trial_id": trial_id,
        "value": b["value"],
        "epoch": b.get("epoch"),
        "skipped": [],
    }

    ckpt = fetch_checkpoint(
        b.get("checkpoint"),
        out_dir / BEST_CKPT,
        filesystem=storage_filesystem,
        fallback=TrainLayout(files.trial_dir(trial_id)).best,
    )
    result["checkpoint"] = str(ckpt)
    if not quiet:
        print(
            f"automl: best trial {trial_id}, epoch {b.get('epoch')}: {ctx.metric}={b['value']:.6g} -> {ckpt}"
        )

    values = trial_values(ctx.space, best.get("config") or {}, rng=0)
    cfg = build_trial_spec(ctx, values, trial_id)
    cfg.results_dir = str(out_dir / "rerun")
    cfg.train.results_dir = None
    cfg.export.checkpoint = str(ckpt)
    spec_path = out_dir / "spec.yaml"
    atomic_write_text(
        spec_path,
        f"# The best trial ({trial_id}) of the AutoML experiment in {files.root}:\n"
        f"# {ctx.metric}={b['value']:.6g} at epoch {b.get('epoch')}. Retrain with `mae train -e {spec_path}`.\n"
        + dump_spec(cfg),
    )
    result["spec"] = str(spec_path)

    onnx = out_dir / f"{cfg.model_name}.onnx"
    try:
        from mae.actions import export

        x = cfg.model_copy(deep=True)
        x.export.checkpoint = str(ckpt)
        x.export.onnx_file = str(onnx)
        x.export.results_dir = str(out_dir / "export")
        summary = export.run(x, overwrite=True)
        result["onnx_file"] = summary["onnx_file"]
        result["onnx"] = {k: summary.get(k) for k in ("max_abs_diff", "tolerance", "output", "output_dim")}
    except MAEError as e:
        line = f"ONNX export skipped because it failed: {str(e).splitlines()[0]}"
        result["skipped"].append(line)
        print(f"automl: {line}")
        _write_best_json(out_dir, result, best, ctx)
        return result

    try:
        from mae.actions import gen_trt_engine

        g = cfg.model_copy(deep=True)
        g.gen_trt_engine.onnx_file = str(onnx)
        g.gen_trt_engine.trt_engine = str(out_dir / f"{cfg.model_name}.engine")
        g.gen_trt_engine.results_dir = str(out_dir / "gen_trt_engine")
        engine = gen_trt_engine.run(g, overwrite=True)
        result["engine"] = engine["trt_engine"]
    except MissingDependencyError as e:  # said once, in the summary printed after this
        line = f"TensorRT engine skipped because {_lower_first(str(e).splitlines()[0])}"
        result["skipped"].append(line)
    except MAEError as e:
        line = f"TensorRT engine skipped because the build failed: {str(e).splitlines()[0]}"
        result["skipped"].append(line)
        print(f"automl: {line}")
    _write_best_json(out_dir, result, best, ctx)
    return result


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text else text


def _write_best_json(
    out_dir: Path, result: Mapping[str, Any], best: Mapping[str, Any], ctx: TrialContext
) -> None:
    data = {
        **result,
        "metric": ctx.metric,
        "mode": ctx.mode,
        "config": best.get("config"),
        "tune_checkpoint": (best.get("best") or {}).get("checkpoint"),
    }
    atomic_write_json(out_dir / "best.json", data)


def read_best(files) -> dict[str, Any] | None:
    try:
        return json.loads((files.best / "best.json").read_text())
    except (OSError, ValueError):
        return None


__all__ = ["deploy_best", "fetch_checkpoint", "read_best"]

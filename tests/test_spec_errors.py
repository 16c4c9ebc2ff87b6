"""The corpus of bad specs and overrides: each gives its one-line message and exit code 2, no traceback."""

from __future__ import annotations

import pytest

from mae.cli import main

# (spec file content or None, overrides, expected substring of the single error line)
CASES = [
    pytest.param(
        None,
        ["train.optim.lrr=1e-3"],
        "train.optim.lrr: unknown key (did you mean 'train.optim.lr'",
        id="typo-leaf",
    ),
    pytest.param(
        None,
        ["train.lr=1e-3"],
        "train.lr: unknown key (did you mean 'train.optim.lr'?)",
        id="leaf-wrong-section",
    ),
    pytest.param(
        None, ["trian.num_epochs=3"], "trian: unknown key (did you mean 'train'?)", id="typo-section"
    ),
    pytest.param(
        {"dataset": {"augmentaton": {"input_size": 32}}},
        [],
        "dataset.augmentaton: unknown key (did you mean 'dataset.augmentation'",
        id="typo-in-file",
    ),
    pytest.param(
        None,
        ["train.num_epochs=abc"],
        "train.num_epochs='abc': input should be a valid integer",
        id="wrong-type-int",
    ),
    pytest.param(
        None,
        ["dataset.batch_size=1.5"],
        "dataset.batch_size=1.5: input should be a valid integer",
        id="float-for-int",
    ),
    pytest.param(
        None,
        ["model.global_pool=1"],
        "model.global_pool=1: input should be a valid boolean",
        id="int-for-bool",
    ),
    pytest.param(
        None,
        ["train.optim.lr=fast"],
        "train.optim.lr='fast': input should be a valid number",
        id="str-for-float",
    ),
    pytest.param(
        None,
        ["train.num_epochs=0"],
        "train.num_epochs=0: input should be greater than or equal to 1",
        id="below-min",
    ),
    pytest.param(
        None, ["train.optim.lr=0"], "train.optim.lr=0: input should be greater than 0", id="lr-zero"
    ),
    pytest.param(
        None,
        ["train.optim.lr=5"],
        "train.optim.lr=5: input should be less than or equal to 1",
        id="lr-above-max",
    ),
    pytest.param(
        None, ["train.mask_ratio=1.0"], "train.mask_ratio=1.0: input should be less than 1", id="mask-ratio-1"
    ),
    pytest.param(None, ["model.arch=vit_bse_patch16"], "did you mean 'vit_base_patch16'", id="bad-arch"),
    pytest.param(
        None,
        ["train.precision=fp64"],
        "train.precision='fp64': input should be 'fp32', 'fp16' or 'bf16'",
        id="bad-enum",
    ),
    pytest.param(
        None,
        ["train.stage=pretraining"],
        "train.stage='pretraining': input should be 'pretrain' or 'finetune'",
        id="bad-stage",
    ),
    pytest.param(
        None,
        ["dataset.augmentation.mixup_mode=row"],
        "dataset.augmentation.mixup_mode='row'",
        id="bad-mixup-mode",
    ),
    pytest.param(
        None,
        ["train.gpu_ids=[0,1]"],
        "train.gpu_ids=[0, 1]: lists 2 GPU(s) but train.num_gpus=1",
        id="gpu-ids-vs-num-gpus",
    ),
    pytest.param(None, ["train.num_gpus=2", "train.gpu_ids=[1,1]"], "repeats a GPU id", id="gpu-ids-repeat"),
    pytest.param(
        None,
        ["dataset.train_data_sources=null"],
        "dataset.train_data_sources: required by train",
        id="missing-train-data",
    ),
    pytest.param(
        {"dataset": {"train_data_sources": "???"}},
        [],
        "dataset.train_data_sources: the spec has '???'",
        id="tao-missing-value",
    ),
    pytest.param(
        None,
        ["dataset.train_data_sources=/nonexistent/images_train.tar.gz"],
        "no such file or folder",
        id="data-not-found",
    ),
    pytest.param(
        None,
        ["dataset.augmentation.min_scale=0.9", "dataset.augmentation.max_scale=0.5"],
        "min_scale=0.9 must not exceed",
        id="scale-order",
    ),
    pytest.param(
        None,
        ["dataset.augmentation.mean=[0.5,0.5]"],
        "dataset.augmentation.mean=[0.5, 0.5]: list should have at least 3 items",
        id="mean-length",
    ),
    pytest.param(
        None,
        ["train.optim.monitor_name=val_loss"],
        "is measured on validation data; set dataset.val_data_sources",
        id="monitor-needs-val",
    ),
    pytest.param(
        None,
        ["train.optim.monitor_name=ACC_all"],
        "needs a classifier (train.stage=finetune)",
        id="acc-in-pretrain",
    ),
    pytest.param(
        None, ["gen_trt_engine.tensorrt.data_type=int8"], "int8 needs a calibration dataset", id="trt-int8"
    ),
    pytest.param(
        None,
        ["gen_trt_engine.tensorrt.min_batch_size=8", "gen_trt_engine.tensorrt.max_batch_size=4"],
        "min <= opt <= max",
        id="trt-profile",
    ),
    pytest.param(None, ["export.batch_size=0"], "export.batch_size=0: use -1", id="export-batch-zero"),
    pytest.param(
        None,
        ["dataset.train_data_sources=5"],
        "dataset.train_data_sources=5: input should be a valid string or a valid list",
        id="source-type",
    ),
    pytest.param(None, ["learning_rate"], "expected key=value", id="override-no-value"),
    pytest.param(
        {"learning_rate": 1e-3, "train": {"optim": {"lr": 2e-3}}},
        [],
        "learning_rate=0.001 and train.optim.lr=0.002",
        id="shorthand-conflict",
    ),
    pytest.param(
        {"model": {"mask_ratio": 0.6}, "train": {"mask_ratio": 0.7}},
        [],
        "model.mask_ratio=0.6 and train.mask_ratio=0.7",
        id="alias-conflict",
    ),
    pytest.param({"results_dir": "${train.nope}"}, [], "${train.nope} names no key", id="bad-interpolation"),
    pytest.param(
        {"results_dir": "${model_name}", "model_name": "${results_dir}"},
        [],
        "interpolation cycle",
        id="interpolation-cycle",
    ),
    pytest.param("train: [1, 2\n", [], "invalid YAML at line", id="yaml-syntax"),
    pytest.param("- just\n- a list\n", [], "expected a mapping of keys at the top", id="yaml-not-mapping"),
    pytest.param({"train": 5}, [], "train=5: input should be a valid dictionary", id="section-not-mapping"),
]


@pytest.mark.parametrize("spec,overrides,expected", CASES)
def test_bad_spec_gives_one_line_and_exit_2(spec, overrides, expected, write_spec, data_dir, capsys):
    base = {"dataset": {"train_data_sources": str(data_dir)}}
    if spec is None:
        path = write_spec(base)
    elif isinstance(spec, dict):
        merged = dict(base)
        for k, v in spec.items():
            merged[k] = {**merged[k], **v} if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
        path = write_spec(merged)
    else:
        path = write_spec(spec)
    rc = main(["train", "-e", str(path), *overrides])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("mae: error: ")
    assert expected in lines[0], lines[0]
    assert "Traceback" not in err


def test_every_problem_is_reported_at_once(write_spec, data_dir, capsys):
    path = write_spec(
        {"dataset": {"train_data_sources": str(data_dir), "batch_size": 0}, "train": {"seed": -1}}
    )
    rc = main(["train", "-e", str(path), "model.arch=nope", "train.precison=fp16"])
    lines = capsys.readouterr().err.splitlines()
    assert rc == 2
    assert len(lines) == 4, lines
    joined = "\n".join(lines)
    for key in ("dataset.batch_size=0", "train.seed=-1", "model.arch='nope'", "train.precison: unknown key"):
        assert key in joined


def test_missing_spec_file(capsys, tmp_path):
    rc = main(["train", "-e", str(tmp_path / "nope.yaml")])
    assert rc == 2
    assert "does not exist" in capsys.readouterr().err


def test_action_specific_requirements(write_spec, data_dir, capsys):
    path = write_spec({"dataset": {"val_data_sources": str(data_dir)}})
    assert main(["evaluate", "-e", str(path), "--print-config"]) == 2
    assert "evaluate.checkpoint or evaluate.trt_engine: required by evaluate" in capsys.readouterr().err
    assert main(["export", "-e", str(path), "--print-config"]) == 2
    assert "export.checkpoint: required by export" in capsys.readouterr().err
    # A `???` outside what the action reads does not matter to it.
    path = write_spec(
        {
            "dataset": {"val_data_sources": str(data_dir)},
            "export": {"checkpoint": "???"},
            "evaluate": {"checkpoint": str(data_dir)},
        }
    )
    assert main(["evaluate", "-e", str(path), "--print-config"]) == 0

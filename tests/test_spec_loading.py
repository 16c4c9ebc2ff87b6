"""Loading specs: a TAO MAE spec with every key loads unchanged; overrides, shorthands, aliases, `???`, `${}`."""

from __future__ import annotations

import logging

import pytest

from mae.config import ExperimentConfig
from mae.errors import ConfigError
from mae.spec import all_keys, dump_spec, flatten, load_spec

# Every key of PRODUCT.md section 3, in TAO's layout, including TAO's `???` and `${...}` forms.
TAO_SPEC = """
results_dir: /tmp/tao_results
encryption_key: tlt_encode
model_name: mae
dataset:
  batch_size: 32
  num_workers_per_gpu: 2
  train_data_sources: {data}
  val_data_sources: {data}
  test_data_sources: ???
  augmentation:
    input_size: 224
    mean: [0.485, 0.456, 0.406]
    std: [0.229, 0.224, 0.225]
    min_scale: 0.1
    max_scale: 2.0
    min_ratio: 0.75
    max_ratio: 1.33
    hflip: 0.5
    re_prob: 0.25
    interpolation: bicubic
    smoothing: 0.1
    color_jitter: 0.4
    auto_aug: rand-m9-mstd0.5-inc1
    mixup: 0.8
    cutmix: 1.0
    cutmix_minmax: null
    mixup_prob: 1.0
    mixup_switch_prob: 0.5
    mixup_mode: batch
model:
  arch: vit_base_patch16
  num_classes: 1000
  drop_path_rate: 0.1
  global_pool: true
  decoder_depth: 1
  decoder_embed_dim: 512
  mask_ratio: 0.7
  norm_pix_loss: false
train:
  num_gpus: 2
  gpu_ids: [0, 1]
  num_nodes: 1
  seed: 47
  cudnn:
    benchmark: false
    deterministic: true
  num_epochs: 800
  checkpoint_interval: 5
  checkpoint_interval_unit: epoch
  validation_interval: 10
  resume_training_checkpoint_path: null
  results_dir: ${{results_dir}}/train_run
  stage: pretrain
  accum_grad_batches: 2
  pretrained_model_path: null
  precision: bf16
  distributed_strategy: fsdp
  freeze: []
  optim:
    type: AdamW
    monitor_name: train_loss
    lr: 1.5e-4
    backbone_multiplier: 1.0
    momentum: 0.9
    weight_decay: 0.05
    layer_decay: 0.75
    lr_scheduler: MultiStep
    milestones: [300, 600]
    gamma: 0.1
    warmup_epochs: 40
evaluate:
  checkpoint: ${{train.results_dir}}
  trt_engine: null
  num_gpus: 1
  gpu_ids: [0]
  num_nodes: 1
  batch_size: -1
  results_dir: null
inference:
  checkpoint: ???
  trt_engine: null
  num_gpus: 1
  gpu_ids: [0]
  num_nodes: 1
  batch_size: 16
  results_dir: null
export:
  checkpoint: ???
  onnx_file: ???
  format: onnx
  opset_version: 17
  batch_size: -1
  input_channel: 3
  input_height: 224
  input_width: 224
  on_cpu: true
  gpu_id: 0
  verbose: false
  results_dir: null
gen_trt_engine:
  onnx_file: ???
  trt_engine: ???
  timing_cache: null
  batch_size: -1
  gpu_id: 0
  verbose: false
  results_dir: null
  tensorrt:
    data_type: fp32,fp16
    workspace_size: 1024
    min_batch_size: 1
    opt_batch_size: 4
    max_batch_size: 8
    layers_precision: []
wandb:
  enable: false
  project: TAO Toolkit
  entity: null
  group: null
  tags: [mae]
  reinit: false
  sync_tensorboard: false
  save_code: false
  name: mae_run
  run_id: null
"""


@pytest.fixture
def tao_spec(write_spec, data_dir):
    return write_spec(TAO_SPEC.format(data=data_dir))


def test_tao_spec_with_every_key_loads_unchanged(tao_spec, caplog):
    with caplog.at_level(logging.WARNING, logger="mae"):
        cfg = load_spec(tao_spec, action="train")
    assert "model files are written unencrypted" in caplog.text
    # aliases: the skill description's model.mask_ratio / model.norm_pix_loss land under train
    assert cfg.train.mask_ratio == 0.7 and cfg.train.norm_pix_loss is False
    # interpolation keeps types and substitutes inside strings
    assert cfg.train.results_dir == "/tmp/tao_results/train_run"
    assert cfg.evaluate.checkpoint == "/tmp/tao_results/train_run"
    # TAO's template value decoder_depth: 1 is applied (TAO ignored it)
    assert cfg.model.decoder_depth == 1 and cfg.model.resolved_decoder_depth() == 1
    assert cfg.dataset.augmentation.max_scale == 2.0
    assert cfg.train.optim.lr == pytest.approx(1.5e-4)  # 1.5e-4 without a dot-less quirk
    assert cfg.gen_trt_engine.tensorrt.data_type == "fp32,fp16"
    assert cfg.train.resolved_precision() == "bf16"
    assert cfg.wandb.project == "TAO Toolkit"
    # `???` in sections train does not read falls back to the defaults
    assert cfg.inference.checkpoint is None and cfg.dataset.test_data_sources is None


def test_tao_spec_question_marks_matter_to_the_action_that_reads_them(tao_spec):
    with pytest.raises(ConfigError) as e:
        load_spec(tao_spec, action="export")
    assert e.value.problems == [
        "export.checkpoint: the spec has '???' (a value you must supply) and export needs it",
        "export.onnx_file: the spec has '???' (a value you must supply) and export needs it",
    ]


def test_every_section3_key_is_in_the_config():
    # the TAO spec above names every key of PRODUCT.md section 3; each one is a real field
    import yaml

    tao_keys = set(flatten(yaml.safe_load(TAO_SPEC.format(data="x"))))
    tao_keys -= {"model.mask_ratio", "model.norm_pix_loss"}  # aliases
    assert tao_keys <= set(all_keys())
    # ours beyond TAO: the canonical homes of the aliases, the overwrite switches, the decoded image store and
    # torch.compile (each listed in the README's table of differences)
    assert set(all_keys()) - tao_keys == {
        "train.mask_ratio",
        "train.norm_pix_loss",
        "export.overwrite",
        "gen_trt_engine.overwrite",
        "dataset.store",
        "dataset.store_short_side",
        "train.compile",
    }


def test_overrides_shorthands_and_types(data_dir):
    cfg = load_spec(
        None,
        [
            f"dataset.train_data_sources={data_dir}",
            "num_epochs=7",
            "learning_rate=3e-4",
            "batch_size=8",
            "arch=vit_tiny_patch16",
            "image_size=64",
            "stage=finetune",
            "num_classes=10",
            "resume_checkpoint=/x.ckpt",
            "train.gpu_ids=[0]",
            "model.norm_pix_loss=false",
            "dataset.augmentation.auto_aug=null",
            "train.freeze=[patch_embed, blocks.0]",
        ],
        action="train",
        check_paths=False,
    )
    assert cfg.train.num_epochs == 7 and cfg.train.optim.lr == pytest.approx(3e-4)
    assert cfg.dataset.batch_size == 8 and cfg.model.arch == "vit_tiny_patch16"
    assert cfg.dataset.augmentation.input_size == 64 and cfg.train.stage == "finetune"
    assert cfg.model.num_classes == 10 and cfg.train.resume_training_checkpoint_path == "/x.ckpt"
    assert cfg.train.norm_pix_loss is False and cfg.dataset.augmentation.auto_aug is None
    assert cfg.train.freeze == ["patch_embed", "blocks.0"]


def test_later_overrides_win_and_file_values_are_overridden(write_spec, data_dir):
    path = write_spec({"train": {"num_epochs": 3}, "dataset": {"train_data_sources": str(data_dir)}})
    cfg = load_spec(path, ["train.num_epochs=4", "num_epochs=5"], action="train")
    assert cfg.train.num_epochs == 5


def test_derived_values():
    cfg = load_spec(None, ["train.num_gpus=4"])
    assert cfg.train.gpu_ids == [0, 1, 2, 3]  # default gpu_ids follows num_gpus
    assert ExperimentConfig().model.resolved_decoder_depth() == 1  # convnextv2_base: FCMAE's 1-block decoder
    assert load_spec(None, ["arch=vit_base_patch16"]).model.resolved_decoder_depth() == 8
    assert load_spec(None, ["train.distributed_strategy=fsdp"]).train.resolved_precision() == "fp16"
    assert ExperimentConfig().action_results_dir("export") == "results/export"
    assert load_spec(None, ["export.results_dir=/o"]).action_results_dir("export") == "/o"


def test_env_interpolation(monkeypatch, write_spec):
    monkeypatch.setenv("MAE_TEST_ROOT", "/data/root")
    path = write_spec(
        {"results_dir": "${oc.env:MAE_TEST_ROOT}/out", "model_name": "${oc.env:MAE_NOPE,fallback}"}
    )
    cfg = load_spec(path)
    assert cfg.results_dir == "/data/root/out" and cfg.model_name == "fallback"


def test_dump_round_trips(tao_spec, write_spec):
    cfg = load_spec(tao_spec, action="train")
    again = load_spec(write_spec(dump_spec(cfg), "dumped.yaml"), action="train")
    assert again == cfg


def test_s3_sources_are_not_checked_locally():
    cfg = load_spec(None, ["dataset.train_data_sources=s3://bucket/data/images_train.tar.gz"], action="train")
    assert cfg.dataset.train_data_sources == "s3://bucket/data/images_train.tar.gz"


def test_list_of_sources(data_dir):
    cfg = load_spec(None, [f"dataset.train_data_sources=[{data_dir}, {data_dir}]"], action="train")
    assert cfg.dataset.train_data_sources == [str(data_dir)] * 2


def test_an_automl_trial_id_stands_for_a_checkpoint(tmp_path, data_dir):
    # `<results_dir>/<trial_id>` names a trial's best checkpoint (resolved by the loaders), though no such folder exists
    exp = tmp_path / "results" / "automl"
    (exp / "trials" / "t_0001").mkdir(parents=True)
    (exp / "experiment.json").write_text("{}")
    base = [f"dataset.train_data_sources={data_dir}", "train.stage=finetune"]
    cfg = load_spec(
        None, [*base, f"train.pretrained_model_path={tmp_path / 'results' / 't_0001'}"], action="train"
    )
    assert cfg.train.pretrained_model_path.endswith("t_0001")
    with pytest.raises(ConfigError, match="t_0002'?: no such file or folder"):
        load_spec(
            None, [*base, f"train.pretrained_model_path={tmp_path / 'results' / 't_0002'}"], action="train"
        )

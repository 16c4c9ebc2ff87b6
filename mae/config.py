"""The experiment spec as typed models: the single source of truth.

Validation, CLI overrides, the generated `schemas/` (JSON Schema with TAO's AutoML keywords), the spec
templates and the docs tables all come from the classes below. Key names and nesting follow TAO's MAE spec,
so a TAO spec loads unchanged (see `mae.spec` for `???`, `${...}`, shorthand keys and aliases).

AutoML metadata rides on each field as extra JSON-schema keys (see `param`):
  automl_enabled   the field may be searched
  automl_default   the field is in `automl_default_parameters` (searched when no parameter list is given);
                   emitted as the per-object/root lists, not per field
  log_scale        our extension: search on a log scale (learning rates, weight decay)
  automl_range     our extension: [low, high] searched by default, inside the validation bounds
                   (TAO searches the validation bounds themselves, e.g. a learning rate uniform in [0, 1])
  option_weights   relative probabilities of the `enum` values
  math_cond        TAO's value conditions: "> 0.0", ">= 0", "^ 2" (powers of 2), "/ 32" (multiples of 32),
                   "< depends_on" / "<= depends_on" (relative to the field named in depends_on)
  depends_on       dotted key the condition refers to
  parent_param     this field is sampled before the fields that depend on it
  popular          shown first by tools that list parameters
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mae.metrics import MONITORS
from mae.models.archs import DEFAULT_ARCH, get_arch, list_archs

ACTIONS = ("train", "evaluate", "inference", "export", "gen_trt_engine")
STAGES = ("pretrain", "finetune")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

# A data source: a folder, a .tar/.tar.gz archive or an s3:// URI (or a list of them, read as one dataset).
DataSources = str | list[str] | None


def param(
    default: Any,
    description: str,
    *,
    automl: bool = False,
    search: bool = False,
    log_scale: bool = False,
    automl_range: tuple[float, float] | None = None,
    option_weights: list[float] | None = None,
    math_cond: str | None = None,
    depends_on: str | None = None,
    parent_param: bool = False,
    popular: bool = False,
    **constraints: Any,
) -> Any:
    """A spec field with its AutoML metadata. `search=True` puts it in automl_default_parameters."""
    extra: dict[str, Any] = {"automl_enabled": automl or search}
    if search:
        extra["automl_default"] = True
    if log_scale:
        extra["log_scale"] = True
    if automl_range is not None:
        extra["automl_range"] = list(automl_range)
    if option_weights is not None:
        extra["option_weights"] = option_weights
    if math_cond is not None:
        extra["math_cond"] = math_cond
    if depends_on is not None:
        extra["depends_on"] = depends_on
    if parent_param:
        extra["parent_param"] = True
    if popular:
        extra["popular"] = True
    kwargs: dict[str, Any] = {"description": description, "json_schema_extra": extra, **constraints}
    if isinstance(default, (list, dict)):
        return Field(default_factory=lambda: type(default)(default), **kwargs)
    return Field(default, **kwargs)


def section(cls: type[BaseModel], description: str) -> Any:
    return Field(default_factory=cls, description=description)


class Section(BaseModel):
    # strict: a YAML "1" is not an int and 1 is not a bool; extra="forbid": typos are errors.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)


def _check_gpu_ids(prefix: str, obj: Any, errors: list[str]) -> None:
    """gpu_ids defaults to range(num_gpus); an explicit list must match num_gpus and hold no repeats."""
    if "gpu_ids" not in obj.model_fields_set:
        obj.gpu_ids = list(range(obj.num_gpus))
    elif len(obj.gpu_ids) != obj.num_gpus:
        errors.append(
            f"{prefix}.gpu_ids={obj.gpu_ids}: lists {len(obj.gpu_ids)} GPU(s) but {prefix}.num_gpus="
            f"{obj.num_gpus}; give one id per GPU or drop gpu_ids"
        )
    if len(set(obj.gpu_ids)) != len(obj.gpu_ids):
        errors.append(f"{prefix}.gpu_ids={obj.gpu_ids}: repeats a GPU id; each GPU may appear once")


def _raise(errors: list[str]) -> None:
    # A ValueError lets pydantic collect it with every other problem; mae.spec turns it into one line each.
    if errors:
        raise ValueError("\n".join(errors))


# --------------------------------------------------------------------------------------------- dataset


class AugmentationConfig(Section):
    input_size: int = param(
        224,
        "Image side in pixels fed to the network (crops are resized to it).",
        ge=16,
        le=2048,
        math_cond="/ 16",
        popular=True,
    )
    mean: list[float] = param(
        IMAGENET_MEAN, "Per-channel mean for normalisation (RGB).", min_length=3, max_length=3
    )
    std: list[float] = param(
        IMAGENET_STD, "Per-channel std for normalisation (RGB).", min_length=3, max_length=3
    )
    min_scale: float = param(
        0.1,
        "RandomResizedCrop: smallest crop area as a fraction of the image.",
        gt=0.0,
        le=1.0,
        automl=True,
        automl_range=(0.08, 0.5),
    )
    max_scale: float = param(
        2.0,
        "RandomResizedCrop: largest crop area fraction. Above 1 (TAO's default 2.0) draws that do not fit are "
        "redrawn, as in torchvision; after 10 misses the whole image is used (see docs/data.md).",
        gt=0.0,
        le=4.0,
    )
    min_ratio: float = param(0.75, "RandomResizedCrop: smallest aspect ratio (w/h).", gt=0.0, le=10.0)
    max_ratio: float = param(1.33, "RandomResizedCrop: largest aspect ratio (w/h).", gt=0.0, le=10.0)
    hflip: float = param(0.5, "Probability of a horizontal flip.", ge=0.0, le=1.0, automl=True)
    re_prob: float = param(
        0.0, "Random erasing probability (finetune).", ge=0.0, le=1.0, automl=True, automl_range=(0.0, 0.5)
    )
    interpolation: Literal["bilinear", "bicubic", "random"] = param(
        "bilinear", "Resize interpolation; 'random' picks bilinear or bicubic per image."
    )
    smoothing: float = param(
        0.1, "Label smoothing (finetune).", ge=0.0, lt=1.0, automl=True, automl_range=(0.0, 0.2)
    )
    color_jitter: float = param(
        0.0,
        "Colour jitter strength (finetune; 0 = off).",
        ge=0.0,
        le=1.0,
        automl=True,
        automl_range=(0.0, 0.4),
    )
    auto_aug: str | None = param(
        "rand-m9-mstd0.5-inc1", "RandAugment policy string as in timm (finetune); empty or null = off."
    )
    mixup: float = param(
        0.8, "Mixup alpha (finetune; 0 = off).", ge=0.0, le=10.0, automl=True, automl_range=(0.0, 1.0)
    )
    cutmix: float = param(
        1.0, "CutMix alpha (finetune; 0 = off).", ge=0.0, le=10.0, automl=True, automl_range=(0.0, 1.0)
    )
    cutmix_minmax: list[float] | None = param(
        None, "CutMix box size as [min, max] fractions of the image; overrides the cutmix alpha when set."
    )
    mixup_prob: float = param(
        1.0, "Probability of applying mixup or cutmix to a batch/pair/element.", ge=0.0, le=1.0, automl=True
    )
    mixup_switch_prob: float = param(
        0.5, "Probability of cutmix instead of mixup when both are on.", ge=0.0, le=1.0
    )
    mixup_mode: Literal["batch", "pair", "elem"] = param("batch", "Granularity of mixup/cutmix parameters.")

    @model_validator(mode="after")
    def _ranges(self) -> AugmentationConfig:
        p = "dataset.augmentation"
        errors = []
        if self.min_scale > self.max_scale:
            errors.append(f"{p}.min_scale={self.min_scale} must not exceed {p}.max_scale={self.max_scale}")
        if self.min_ratio > self.max_ratio:
            errors.append(f"{p}.min_ratio={self.min_ratio} must not exceed {p}.max_ratio={self.max_ratio}")
        if any(s <= 0 for s in self.std):
            errors.append(f"{p}.std={self.std}: every std must be > 0")
        if self.cutmix_minmax is not None:
            mm = self.cutmix_minmax
            if len(mm) != 2 or not (0.0 < mm[0] < mm[1] <= 1.0):
                errors.append(f"{p}.cutmix_minmax={mm}: expected [min, max] with 0 < min < max <= 1")
        _raise(errors)
        return self


class DatasetConfig(Section):
    batch_size: int = param(
        64,
        "Images per device per step.",
        ge=1,
        le=65536,
        automl=True,
        math_cond="^ 2",
        automl_range=(8, 256),
        popular=True,
    )
    num_workers_per_gpu: int = param(2, "Data-loading worker processes per device.", ge=0, le=64)
    train_data_sources: DataSources = param(
        None,
        "Training images: folder, .tar/.tar.gz archive or s3:// URI (class folders for finetune).",
        popular=True,
    )
    val_data_sources: DataSources = param(
        None,
        "Validation images in class folders (finetune metrics; kNN accuracy when pretraining).",
        popular=True,
    )
    test_data_sources: DataSources = param(None, "Images for inference (any layout).", popular=True)
    store: bool = param(
        True,
        "Decode the training images once into a memory-mapped store of uint8 pixels in the data cache, shared "
        "by every run and AutoML trial on the node (false: decode every file at every epoch). Validation, "
        "evaluate and inference read the original files.",
    )
    store_short_side: int | None = param(
        None,
        "Short side in pixels of the stored images (larger images are downscaled once, smaller ones kept); "
        "null = input_size / 0.875 (256 for 224). Crops smaller than this are upscaled from the stored "
        "pixels rather than the original (docs/data.md).",
        ge=16,
        le=8192,
    )
    augmentation: AugmentationConfig = section(AugmentationConfig, "Data augmentation.")


# ----------------------------------------------------------------------------------------------- model


class ModelConfig(Section):
    arch: Literal[tuple(list_archs())] = param(  # type: ignore[valid-type]
        DEFAULT_ARCH, "Backbone architecture.", popular=True
    )
    num_classes: int = param(
        1000, "Classes of the finetune head (must match the class folders).", ge=1, le=1_000_000, popular=True
    )
    drop_path_rate: float = param(
        0.1,
        "Stochastic depth rate of the encoder when finetuning (MAE pretraining uses none).",
        ge=0.0,
        lt=1.0,
        automl=True,
        automl_range=(0.0, 0.3),
    )
    global_pool: bool = param(
        True, "Finetune head on the mean of patch tokens + fc_norm (true) or on the class token (false, ViT)."
    )
    decoder_depth: int | None = param(
        None,
        "MAE decoder blocks; null = the family's published setting (ViT/Hiera 8, ConvNeXt V2 1).",
        ge=1,
        le=32,
        automl=True,
        automl_range=(1, 8),
    )
    decoder_embed_dim: int = param(
        512, "MAE decoder width.", ge=16, le=4096, math_cond="/ 16", automl=True, automl_range=(128, 512)
    )

    def resolved_decoder_depth(self) -> int:
        return self.decoder_depth if self.decoder_depth is not None else get_arch(self.arch).decoder_depth


# ----------------------------------------------------------------------------------------------- train


class CudnnConfig(Section):
    benchmark: bool = param(
        False, "cudnn.benchmark: autotune convolution algorithms (faster, not deterministic)."
    )
    deterministic: bool = param(True, "cudnn.deterministic: deterministic convolution algorithms.")


class OptimConfig(Section):
    type: Literal["AdamW"] = param("AdamW", "Optimizer (AdamW, betas (momentum, 0.95) as in MAE).")
    monitor_name: Literal[MONITORS] = param(
        "train_loss", "Metric that picks the best checkpoint (and the default AutoML objective's name)."
    )
    lr: float = param(
        2e-4,
        "Peak learning rate.",
        gt=0.0,
        le=1.0,
        search=True,
        log_scale=True,
        automl_range=(1e-5, 1e-2),
        math_cond="> 0.0",
        popular=True,
    )
    backbone_multiplier: float = param(
        1.0,
        "Learning-rate multiplier of the encoder relative to the head (finetune) or decoder (pretrain).",
        gt=0.0,
        le=10.0,
        automl=True,
        log_scale=True,
        automl_range=(0.05, 1.0),
    )
    momentum: float = param(
        0.9, "AdamW beta1 (TAO's 'momentum').", ge=0.0, lt=1.0, automl=True, automl_range=(0.8, 0.95)
    )
    weight_decay: float = param(
        0.05,
        "Decoupled weight decay (not applied to norms, biases, tokens, position embeddings).",
        ge=0.0,
        le=10.0,
        search=True,
        log_scale=True,
        automl_range=(1e-3, 0.3),
        popular=True,
    )
    layer_decay: float = param(
        0.75,
        "Layer-wise learning-rate decay when finetuning (1.0 = off).",
        gt=0.0,
        le=1.0,
        automl=True,
        automl_range=(0.5, 0.95),
    )
    lr_scheduler: Literal["MultiStep", "cosine"] = param(
        "MultiStep",
        "Learning-rate schedule after warmup, stepped per iteration (cosine decays to 0).",
        search=True,
        option_weights=[0.3, 0.7],
    )
    milestones: list[int] = param(
        [],
        "MultiStep: epochs at which the learning rate is multiplied by gamma (none = constant after warmup).",
    )
    gamma: float = param(0.1, "MultiStep: multiplicative factor at each milestone.", gt=0.0, le=1.0)
    warmup_epochs: int = param(
        0,
        "Linear warmup epochs; at or past train.num_epochs the warmup never finishes (as in TAO; a warning "
        "says so).",
        ge=0,
        le=10_000,
        search=True,
        automl_range=(0, 10),
        math_cond="< depends_on",
        depends_on="train.num_epochs",
    )


class TrainConfig(Section):
    num_gpus: int = param(1, "GPUs per node (on a machine without a GPU: CPU processes).", ge=1, le=1024)
    gpu_ids: list[int] = param([0], "GPU indices to use; defaults to 0..num_gpus-1.")
    num_nodes: int = param(1, "Nodes for multi-node training.", ge=1, le=4096)
    seed: int = param(1234, "Random seed.", ge=0, le=2**32 - 1)
    cudnn: CudnnConfig = section(CudnnConfig, "cuDNN settings.")
    num_epochs: int = param(100, "Training epochs.", ge=1, le=100_000, parent_param=True, popular=True)
    checkpoint_interval: int = param(
        1, "Save a checkpoint every N units (see checkpoint_interval_unit).", ge=1
    )
    checkpoint_interval_unit: Literal["epoch", "step"] = param("epoch", "Unit of checkpoint_interval.")
    validation_interval: int = param(1, "Validate every N epochs.", ge=1)
    resume_training_checkpoint_path: str | None = param(
        None,
        "Checkpoint (or results folder) to resume from; by default the latest one in the results folder.",
    )
    results_dir: str | None = param(None, "Where train writes; default <results_dir>/train.")
    stage: Literal["pretrain", "finetune"] = param(
        "pretrain", "pretrain (masked reconstruction) or finetune.", popular=True
    )
    accum_grad_batches: int = param(
        1, "Gradient accumulation steps.", ge=1, le=1024, automl=True, math_cond="^ 2", automl_range=(1, 8)
    )
    pretrained_model_path: str | None = param(
        None,
        "Pretrained weights (file or results folder) for finetuning; used only when nothing is resumed.",
        popular=True,
    )
    precision: Literal["fp32", "fp16", "bf16"] = param(
        "fp32", "Training precision (16-bit = mixed precision)."
    )
    distributed_strategy: Literal["ddp", "fsdp"] = param(
        "ddp",
        "Multi-device strategy: ddp (find_unused_parameters=True) or fsdp (forces 16-bit mixed precision).",
    )
    mask_ratio: float = param(
        0.75,
        "Fraction of patches masked in pretraining.",
        gt=0.0,
        lt=1.0,
        automl=True,
        automl_range=(0.6, 0.9),
        popular=True,
    )
    norm_pix_loss: bool = param(True, "Reconstruct per-patch normalised pixels (pretraining).", automl=True)
    freeze: list[str] = param([], "Parameter-name prefixes to freeze (e.g. ['patch_embed', 'blocks.0']).")
    compile: bool = param(
        False,
        "torch.compile the network for training (off by default until measured safe for every family; the "
        "first steps are slower while it compiles).",
    )
    optim: OptimConfig = section(OptimConfig, "Optimizer and schedule.")

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        errors: list[str] = []
        _check_gpu_ids("train", self, errors)
        # warmup_epochs >= num_epochs and milestones that never fire run in TAO: spec_notices() warns
        if self.stage == "pretrain" and self.optim.monitor_name == "ACC_all":
            errors.append(
                "train.optim.monitor_name='ACC_all' needs a classifier (train.stage=finetune); "
                "pretraining monitors train_loss, val_loss or knn_acc"
            )
        if self.stage == "finetune" and self.optim.monitor_name == "knn_acc":
            errors.append(
                "train.optim.monitor_name='knn_acc' is a pretraining metric; finetuning monitors "
                "train_loss, val_loss or ACC_all"
            )
        _raise(errors)
        return self

    def resolved_precision(self) -> str:
        """fsdp forces 16-bit mixed precision (bf16 is kept; fp32 becomes fp16)."""
        if self.distributed_strategy == "fsdp" and self.precision == "fp32":
            return "fp16"
        return self.precision


# ------------------------------------------------------------------------------- evaluate / inference


class _RunConfig(Section):
    prefix: ClassVar[str] = ""
    checkpoint: str | None = param(
        None, "Model to run: a checkpoint, an .onnx file, or a results folder (its best checkpoint is used)."
    )
    trt_engine: str | None = param(None, "TensorRT engine to run instead of a checkpoint.")
    num_gpus: int = param(1, "GPUs to use.", ge=1, le=1024)
    gpu_ids: list[int] = param([0], "GPU indices; defaults to 0..num_gpus-1.")
    num_nodes: int = param(1, "Nodes.", ge=1, le=4096)
    batch_size: int = param(-1, "Batch size; -1 = dataset.batch_size.", ge=-1, le=65536)
    results_dir: str | None = param(None, "Where this action writes; default <results_dir>/<action>.")

    @model_validator(mode="after")
    def _consistent(self) -> _RunConfig:
        errors: list[str] = []
        _check_gpu_ids(self.prefix, self, errors)
        if self.batch_size == 0:
            errors.append(f"{self.prefix}.batch_size=0: use -1 (dataset.batch_size) or a positive size")
        _raise(errors)
        return self


class EvaluateConfig(_RunConfig):
    prefix: ClassVar[str] = "evaluate"


class InferenceConfig(_RunConfig):
    prefix: ClassVar[str] = "inference"


# ------------------------------------------------------------------------------------ export / deploy


class ExportConfig(Section):
    checkpoint: str | None = param(None, "Checkpoint (or results folder) to export.")
    onnx_file: str | None = param(None, "Output ONNX path; default <results_dir>/export/<model_name>.onnx.")
    format: Literal["onnx"] = param("onnx", "Export format.")
    opset_version: int = param(17, "ONNX opset (14+ for ViT/Hiera attention).", ge=13, le=23)
    batch_size: int = param(-1, "Static batch size, or -1 for a dynamic batch dimension.", ge=-1, le=65536)
    input_channel: int = param(3, "Input channels.", ge=1, le=4)
    input_height: int | None = param(
        None, "Input height; null = dataset.augmentation.input_size.", ge=16, le=4096
    )
    input_width: int | None = param(
        None, "Input width; null = dataset.augmentation.input_size.", ge=16, le=4096
    )
    on_cpu: bool = param(False, "Export on the CPU even when a GPU is present.")
    gpu_id: int = param(0, "GPU used for export.", ge=0)
    verbose: bool = param(False, "Print the exporter's details.")
    overwrite: bool = param(False, "Replace an existing onnx_file (and its .onnx.data); false refuses.")
    results_dir: str | None = param(None, "Where export writes; default <results_dir>/export.")

    @model_validator(mode="after")
    def _batch(self) -> ExportConfig:
        if self.batch_size == 0:
            _raise(["export.batch_size=0: use -1 (dynamic batch) or a positive size"])
        return self


class TensorRTConfig(Section):
    data_type: str = param(
        "fp32",
        "Engine precision: fp32, fp16, or a comma list such as 'fp32,fp16' (FP16 kernels allowed "
        "with FP32 fallback). int8 needs a calibrator and is not offered.",
    )
    workspace_size: int = param(1024, "Builder workspace in MB.", ge=1, le=1_048_576)
    min_batch_size: int = param(1, "Optimisation profile: smallest batch.", ge=1)
    opt_batch_size: int = param(1, "Optimisation profile: batch TensorRT tunes for.", ge=1)
    max_batch_size: int = param(1, "Optimisation profile: largest batch.", ge=1)
    layers_precision: list[str] = param([], "Per-layer precision overrides as 'layer_name:fp32'.")

    @model_validator(mode="after")
    def _consistent(self) -> TensorRTConfig:
        p = "gen_trt_engine.tensorrt"
        errors = []
        types = [t.strip().lower() for t in self.data_type.split(",")]
        bad = [t for t in types if t not in ("fp32", "fp16", "int8")]
        if bad or not types:
            errors.append(f"{p}.data_type={self.data_type!r}: allowed fp32, fp16 or a comma list of them")
        elif "int8" in types:
            errors.append(
                f"{p}.data_type={self.data_type!r}: int8 needs a calibration dataset, which is not supported; "
                "use fp16 (or fp32,fp16)"
            )
        if not self.min_batch_size <= self.opt_batch_size <= self.max_batch_size:
            errors.append(
                f"{p}: batch sizes must satisfy min <= opt <= max, got min={self.min_batch_size}, "
                f"opt={self.opt_batch_size}, max={self.max_batch_size}"
            )
        for entry in self.layers_precision:
            name, _, prec = entry.rpartition(":")
            if not name or prec.lower() not in ("fp32", "fp16"):
                errors.append(
                    f"{p}.layers_precision: {entry!r} should look like 'layer_name:fp32' or ':fp16'"
                )
        _raise(errors)
        return self


class GenTrtEngineConfig(Section):
    onnx_file: str | None = param(None, "ONNX model (or export results folder) to build from.")
    trt_engine: str | None = param(
        None, "Output engine path; default <results_dir>/gen_trt_engine/<model_name>.engine."
    )
    timing_cache: str | None = param(None, "TensorRT timing cache file, read if present and written after.")
    batch_size: int = param(-1, "Static batch, or -1 to use the min/opt/max profile.", ge=-1, le=65536)
    gpu_id: int = param(0, "GPU that builds the engine.", ge=0)
    verbose: bool = param(False, "Verbose TensorRT logging.")
    overwrite: bool = param(False, "Replace an existing trt_engine (and its .json); false refuses.")
    results_dir: str | None = param(
        None, "Where gen_trt_engine writes; default <results_dir>/gen_trt_engine."
    )
    tensorrt: TensorRTConfig = section(TensorRTConfig, "TensorRT builder settings.")


class WandbConfig(Section):
    enable: bool = param(False, "Also log to Weights & Biases (needs the 'wandb' extra; offline mode works).")
    project: str = param("mae-automl", "W&B project.")
    entity: str | None = param(None, "W&B entity (team or user).")
    group: str | None = param(None, "W&B run group.")
    tags: list[str] = param([], "W&B tags.")
    reinit: bool = param(False, "Allow several W&B runs in one process.")
    sync_tensorboard: bool = param(False, "Sync TensorBoard logs to W&B.")
    save_code: bool = param(False, "Save the code with the run.")
    name: str | None = param(None, "W&B run name.")
    run_id: str | None = param(None, "Resume this W&B run id.")


# ------------------------------------------------------------------------------------------------ root


class ExperimentConfig(Section):
    """The whole spec. Each action reads its own section plus dataset/model where it needs them."""

    results_dir: str = param(
        "results", "Root results folder; each action writes under <results_dir>/<action>."
    )
    encryption_key: str | None = param(
        None, "Accepted for TAO compatibility; model files are written unencrypted (a warning says so)."
    )
    model_name: str = param("mae", "Name used for exported files and the MLflow experiment.", min_length=1)
    dataset: DatasetConfig = section(DatasetConfig, "Data sources, batching and augmentation.")
    model: ModelConfig = section(ModelConfig, "Architecture and head.")
    train: TrainConfig = section(TrainConfig, "Training.")
    evaluate: EvaluateConfig = section(EvaluateConfig, "The evaluate action.")
    inference: InferenceConfig = section(InferenceConfig, "The inference action.")
    export: ExportConfig = section(ExportConfig, "The export action (ONNX).")
    gen_trt_engine: GenTrtEngineConfig = section(GenTrtEngineConfig, "The gen_trt_engine action (TensorRT).")
    wandb: WandbConfig = section(WandbConfig, "Optional Weights & Biases logging (MLflow is always on).")

    def action_results_dir(self, action: str) -> str:
        """<results_dir>/<action> unless the action's own results_dir is set."""
        own = getattr(getattr(self, action), "results_dir", None)
        import os

        return own or os.path.join(self.results_dir, action)


# TAO's shorthand keys (accepted at the top level of a spec and in overrides).
SHORTHANDS: dict[str, str] = {
    "num_epochs": "train.num_epochs",
    "batch_size": "dataset.batch_size",
    "learning_rate": "train.optim.lr",
    "num_classes": "model.num_classes",
    "stage": "train.stage",
    "arch": "model.arch",
    "image_size": "dataset.augmentation.input_size",
    "resume_checkpoint": "train.resume_training_checkpoint_path",
}

# Other spellings of the same key (the TAO skill description writes these under model.).
ALIASES: dict[str, str] = {
    "model.mask_ratio": "train.mask_ratio",
    "model.norm_pix_loss": "train.norm_pix_loss",
}

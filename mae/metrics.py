"""The metrics this product reports, with the direction that makes them better: one home, torch-free.

The same string travels end to end: Lightning logs it, status.json and MLflow store it, `monitor_name` and
`automl run --metric/--objective` name it, Ray Tune optimises it (STYLE.md: one metric name end to end).
"""

from __future__ import annotations

TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"
ACC_ALL = "ACC_all"  # top-1 accuracy on the validation set (finetune)
ACC_TOP5 = "ACC_top5"
KNN_ACC = "knn_acc"  # leave-one-out kNN top-1 of the encoder's features on the labelled val set (pretrain)

# Every metric a training run logs per epoch, and whether lower or higher is better.
METRIC_MODES: dict[str, str] = {
    TRAIN_LOSS: "min",
    VAL_LOSS: "min",
    ACC_ALL: "max",
    ACC_TOP5: "max",
    KNN_ACC: "max",
}
# What train.optim.monitor_name accepts (the best checkpoint is chosen by it) and what a search may optimise.
MONITORS: tuple[str, ...] = (TRAIN_LOSS, VAL_LOSS, ACC_ALL, KNN_ACC)
# Metrics measured on held-out data: they need dataset.val_data_sources.
HELD_OUT_METRICS: tuple[str, ...] = (VAL_LOSS, ACC_ALL, KNN_ACC)
# Which stage reports which held-out metrics.
STAGE_METRICS: dict[str, tuple[str, ...]] = {
    "pretrain": (TRAIN_LOSS, VAL_LOSS, KNN_ACC),
    "finetune": (TRAIN_LOSS, VAL_LOSS, ACC_ALL, ACC_TOP5),
}
# Per-epoch measurements of the run itself, logged beside the metrics (not objectives by default).
SYSTEM_METRICS: tuple[str, ...] = (
    "lr",
    "epoch_time_s",
    "images_per_sec",
    "peak_memory_gb",  # CUDA only
    "peak_host_memory_gb",
)
# Deploy metrics of the exported model (mae.deploy.profile measures them): they depend on the architecture and
# the input shape, not on the weights, and can be objectives or constraints of a search.
DEPLOY_METRIC_MODES: dict[str, str] = {
    "latency_ms": "min",  # median onnxruntime CPU (or TensorRT) latency at --latency-batch
    "throughput_ips": "max",  # images/s at a larger batch
    "params_m": "min",  # millions of parameters the exported forward uses
    "gflops": "min",  # 10^9 flops of one image, a multiply-add counting 2
    "onnx_mb": "min",  # size of the ONNX file, 10^6 bytes
}
# Everything a trial reports per epoch that the AutoML ledger and MLflow keep.
EPOCH_KEYS: tuple[str, ...] = (*METRIC_MODES, *SYSTEM_METRICS, *DEPLOY_METRIC_MODES)
MAXIMIZED = frozenset(k for k, mode in METRIC_MODES.items() if mode == "max")


def mode_of(metric: str) -> str | None:
    """'min' or 'max' for a metric this product reports (training or deploy); None for one it does not know."""
    return METRIC_MODES.get(metric) or DEPLOY_METRIC_MODES.get(metric)

"""Ray fixtures for the AutoML tests: one simulated two-node cluster for the session, tiny specs, and trial
callbacks that inject failures.

`ray_cluster` starts `ray.cluster_utils.Cluster` with two nodes of one CPU each (a `trial_slot` resource on
each, so two trials run at once, one per node), the dashboard on (Ray Train needs its state API to release a
stopped trial's workers), the S3 test server's AWS_* variables in the job's environment (trials on either node
reach the same storage), and this `tests` package shipped to the workers (`runtime_env` py_modules) so that
the failure-injecting callbacks below can be imported there. It is shut down at the end of the session.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent

# A tiny MAE: ViT micro (4 blocks x 128, 4-px patches) at 32 px, a 1-block decoder, no loader workers.
TINY = [
    "model.arch=vit_micro_patch4",
    "image_size=32",
    "model.decoder_depth=1",
    "model.decoder_embed_dim=64",
    "dataset.augmentation.hflip=0.0",
    "dataset.augmentation.min_scale=0.5",
    "dataset.augmentation.max_scale=1.0",
    "dataset.augmentation.auto_aug=null",
    "dataset.num_workers_per_gpu=0",
    "batch_size=20",
    "train.optim.warmup_epochs=0",  # pinned: every trial learns from its first step
    "model_name=tiny",
]


def tiny_overrides(results_dir, train_dir, *more: str, epochs: int = 2) -> list[str]:
    return [
        f"results_dir={results_dir}",
        f"dataset.train_data_sources={train_dir}",
        f"num_epochs={epochs}",
        *TINY,
        *more,
    ]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster(s3_server, tmp_path_factory):
    import ray
    from ray.cluster_utils import Cluster

    from automl.ray_session import RUNTIME_ENV_VARS
    from tests.s3server import _env_for

    if ray.is_initialized():
        ray.shutdown()
    env = {k: v for k, v in _env_for(s3_server, s3_server.workdir).items() if v is not None}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "resources": {"trial_slot": 1},
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": _free_port(),  # another Ray on this machine may hold the default 8265
        },
    )
    cluster.add_node(num_cpus=1, resources={"trial_slot": 1})
    ray.init(
        address=cluster.address,
        runtime_env={"env_vars": {**RUNTIME_ENV_VARS, **env}, "py_modules": [str(TESTS)]},
        log_to_driver=False,
    )
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


# ------------------------------------------------------------------------------------ fault injection


class _Fault(pl.Callback):
    """Raises, or poisons the weights with NaN, at the first training step of `epoch`."""

    def __init__(self, mode: str, epoch: int = 1):
        self.mode, self.epoch = mode, epoch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch != self.epoch:
            return
        if self.mode == "raise":
            raise RuntimeError("injected failure: a bug in this trial")
        if self.mode == "nan":
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def fault_plan(cfg) -> pl.Callback:
    """Trial callback factory (`--trial-callback tests.ray_fixtures:fault_plan`): the test writes files
    `<results_dir>/fault_plan/<n>-<mode>`; the first trials to start claim one each (atomic rename), and a
    trial keeps its fault on every retry, so a raising trial fails again and exhausts its retries."""
    plan = Path(cfg.results_dir) / "fault_plan"
    trial_id = Path(cfg.train.results_dir).name
    if not plan.is_dir():
        return pl.Callback()
    for claimed in plan.glob(f"*.{trial_id}"):
        return _Fault(claimed.name.split("-", 1)[1].split(".")[0])
    for todo in sorted(p for p in plan.iterdir() if p.suffix == ""):
        try:
            os.rename(todo, todo.with_name(f"{todo.name}.{trial_id}"))
        except OSError:
            continue  # another trial claimed it first
        return _Fault(todo.name.split("-", 1)[1])
    return pl.Callback()


def write_fault_plan(results_dir: Path, *modes: str) -> None:
    plan = Path(results_dir) / "fault_plan"
    plan.mkdir(parents=True, exist_ok=True)
    for i, mode in enumerate(modes):
        (plan / f"{i}-{mode}").touch()

"""MAE AutoML's search layer: schema reader, search spaces, policy, Ray Tune runner, MLflow tracking.

    import automl
    result = automl.run("spec.yaml", ["dataset.train_data_sources=/data/train"], max_trials=8)
    print(result.best)                        # the best trial: value, epoch, config, checkpoint, ONNX file
    automl.experiment_status("results")       # trials so far and the best so far (also while it runs)

The same as `automl run|status|ui` on the command line (docs/automl.md).
"""

from automl.algorithms import ALGORITHMS, SCHEDULERS, TAO_ALGORITHMS, resolve_algorithm
from automl.options import SearchOptions
from automl.report import experiment_status, format_status
from automl.runner import AutoMLResult, run
from automl.ui import start_ui, ui_command

__all__ = [
    "ALGORITHMS",
    "SCHEDULERS",
    "TAO_ALGORITHMS",
    "AutoMLResult",
    "SearchOptions",
    "experiment_status",
    "format_status",
    "resolve_algorithm",
    "run",
    "start_ui",
    "ui_command",
]

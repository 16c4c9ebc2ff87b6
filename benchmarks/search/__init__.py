"""Search-quality benchmark: does `automl run --policy auto` find a better MAE for less compute than TAO's
default AutoML or random search? (issue 11)

    python -m benchmarks.search [--quick] [--seeds 10] [--trials 6] [--epochs 3]

arms.py (the searches compared), harness.py (one search through `automl.run`, its anytime curve and selected
encoder), downstream.py (one finetune recipe and the test top-1), report.py (figures, bootstrap intervals, the
PNG), correlation.py (does train_loss or knn_acc predict finetune top-1?), refinetune.py (each arm's selected
encoder trained again bit for bit and finetuned with a recipe that converges, beside a no-pretraining control),
__main__.py (the command).
"""

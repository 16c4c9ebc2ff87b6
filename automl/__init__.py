"""MAE AutoML's search layer: schema reader, search spaces, policy, Ray Tune runner, MLflow tracking."""

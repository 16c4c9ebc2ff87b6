"""MAE AutoML's training library: spec, models, data, engine and the five actions (`mae` CLI)."""

__version__ = "0.1.0"

"""flare_ray: hyperparameter search and ablations of FLARE on Ray, tracked in MLflow."""

__version__ = "0.1.0"

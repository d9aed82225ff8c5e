"""The search: Ray Tune + Optuna (+ ASHA) over trials that are Ray Train runs."""

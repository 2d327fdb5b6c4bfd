"""Experiments: the Hydra schema, MLflow tracking and plots shared by train.py and evaluate.py."""

"""The store is named by its absolute path: a relative SQLite URI is made absolute where it is
given, and the serving command export.py prints works from any directory."""

from __future__ import annotations

import shlex

import mlflow

from experiment.tracking import ROOT, serve_command, tracking_uri


def test_a_relative_sqlite_uri_is_made_absolute_from_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri("sqlite:///runs/mlflow.db") == f"sqlite:///{tmp_path}/runs/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    assert tracking_uri(None) == f"sqlite:///{tmp_path}/env.db"
    assert tracking_uri("sqlite:////srv/mlflow.db") == "sqlite:////srv/mlflow.db"
    assert tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert tracking_uri(None) == f"sqlite:///{ROOT / 'mlflow.db'}"


def test_the_printed_serve_command_names_the_store_by_its_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri("sqlite:///mlflow.db")  # relative: only right in this directory
    try:
        command = shlex.split(serve_command("models:/cadence-policy@champion", 5001))
    finally:
        mlflow.set_tracking_uri(previous)
    assert command[0] == f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/mlflow.db"
    assert command[1:] == [
        "mlflow", "models", "serve", "-m", "models:/cadence-policy@champion",
        "--env-manager", "local", "-p", "5001",
    ]  # fmt: skip

"""evaluate.py's modes: ``mode=`` says what it does, each mode reads its own keys and refuses
another mode's by name (no silent precedence), the logger's ε and the targets' softening are two
keys, a logged dataset goes under outputs/ by default, and record -> estimate -> watch run in
process on a small log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import preloaded
import pytest
from hydra import compose, initialize_config_dir

import evaluate
from envs.config import CONF_DIR
from experiment.schema import EstimateConfig, RecordConfig, WatchConfig, register
from serve import circuit
from simulate.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def _run(*overrides: str) -> object:
    """``python evaluate.py *overrides`` in process (the keys named as on a command line)."""
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=list(overrides))
    return evaluate.run_mode(cfg, [o.split("=", 1)[0] for o in overrides])


@pytest.mark.parametrize(
    ("overrides", "said"),
    [
        (["mode=estimate", "record.epsilon=0.2"], "record.epsilon is read by mode=record, not by"),
        (["record.out=x.parquet"], "record.out is read by mode=record, not by mode=compare"),
        (["mode=record", "estimate.soften=0"], "estimate.soften is read by mode=estimate"),
        (["mode=record", "policies=[segment_rules]"], "policies is read by mode=compare or"),
        (
            ["mode=compare", "crisis.monitor.shift=3"],
            "crisis.monitor.shift is read by mode=monitor",
        ),
        (["mode=watch", "crisis.window_days=10"], "crisis.window_days is read by mode=monitor,"),
        (["mode=monitor", "watch.circuit=c.json"], "watch.circuit is read by mode=watch"),
        # named on the command line, even at its default value
        (["mode=estimate", "record.epsilon=0.1"], "record.epsilon is read by mode=record"),
    ],
)
def test_a_key_of_another_mode_is_refused_by_name(overrides, said):
    with pytest.raises(ConfigError, match=said):
        _run(*overrides)


def test_an_unknown_mode_and_a_logger_that_does_not_explore_are_refused():
    with pytest.raises(ConfigError, match="mode must be one of .*'record'.*got 'log'"):
        _run("mode=log")
    with pytest.raises(ConfigError, match="record.epsilon must be > 0"):
        _run("mode=record", "record.epsilon=0")
    with pytest.raises(ConfigError, match="estimate.below_floor must be 'clip' or 'refuse'"):
        _run("mode=estimate", "estimate.below_floor=drop")
    with pytest.raises(ConfigError, match="watch.first_day must be a date YYYY-MM-DD"):
        _run("mode=watch", "watch.first_day=monday")


def test_the_former_keys_name_what_replaced_them():
    assert "mode=record record.policy=" in evaluate.refuse_renamed(["log=segment_rules"])
    assert "mode=estimate estimate.data=" in evaluate.refuse_renamed(["+logs=l.parquet"])
    both = evaluate.refuse_renamed(["eval.num_clients=5", "log_epsilon=0.2"])
    assert "record.epsilon=" in both and "estimate.soften=" in both  # two meanings, two keys
    assert "mode=monitor" in evaluate.refuse_renamed(["monitor=on"])
    assert evaluate.refuse_renamed(["mode=record", "record.out=x", "-m"]) is None


def test_a_logged_dataset_goes_under_outputs_and_each_mode_reads_it_there():
    assert RecordConfig().out == "outputs/logs.parquet"
    assert EstimateConfig().data == WatchConfig().data == RecordConfig().out


@pytest.mark.slow
def test_record_estimate_and_watch_on_one_small_log(tmp_path, capsys):
    logs = tmp_path / "out" / "logs.parquet"
    size = ["eval.num_clients=300", "eval.horizon_days=6", "eval.n_boot=20"]
    path = _run(
        "mode=record", f"record.out={logs}", "record.epsilon=0.3", "record.truth=[no_send]", *size
    )
    assert path == logs
    frame = pl.read_parquet(logs)
    assert frame["day"].n_unique() == 6 and "counterfactual_no_send" in frame.columns
    assert "logging segment_rules (ε = 0.3) on 300 clients over 6 days" in capsys.readouterr().out

    ids = _run(
        "mode=estimate",
        f"estimate.data={logs}",
        "policies=[segment_rules,no_send]",
        "estimate.mlflow=false",
        *size,
    )
    out = capsys.readouterr().out
    assert ids == [] and "| no_send | pdwis |" in out and "targets softened by 0.1" in out

    state = tmp_path / "circuit.json"
    written = _run("mode=watch", f"watch.data={logs}", f"watch.circuit={state}")
    assert written == state and not circuit.read(state)  # a calm log trips nothing
    assert "segment" in capsys.readouterr().out  # the alert log's columns


def test_a_log_it_cannot_read_is_refused_naming_the_key(tmp_path):
    missing = tmp_path / "nope.parquet"
    with pytest.raises(ConfigError, match=f"estimate.data: cannot use {missing}"):
        _run("mode=estimate", f"estimate.data={missing}", "policies=[no_send]")
    with pytest.raises(ConfigError, match=f"watch.data: cannot use {missing}.*no such file"):
        _run("mode=watch", f"watch.data={missing}")


@pytest.mark.slow  # two evaluate.py processes: Hydra + MLflow start-up
def test_the_command_line_refuses_in_one_line_without_a_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def evaluate_py(*args: str) -> subprocess.CompletedProcess:
        return preloaded.run(
            [sys.executable, str(ROOT / "evaluate.py"), *args, f"hydra.run.dir={tmp_path}"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
            env=env,
        )

    for args, said in (
        (["mode=estimate", "record.epsilon=0.2"], "record.epsilon is read by mode=record"),
        (["logs=l.parquet"], "logs= is gone: use mode=estimate estimate.data=<file>"),
    ):
        done = evaluate_py(*args)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and said in done.stderr
        assert done.stderr.strip().count("\n") == 0, done.stderr
    assert not (tmp_path / "outputs").exists()  # nothing was written


@pytest.mark.slow  # trains a bandit run through train.py (about 20 s)
def test_estimate_finds_run_policies_in_the_store_tracking_uri_names(
    tmp_path, empty_store, monkeypatch
):
    """``policies=[run:<id>]`` in mode=estimate (and record.policy=run:<id>) is looked up in
    ``tracking.uri``'s store, not MLflow's default or the project's."""
    store = f"sqlite:///{shutil.copyfile(empty_store, tmp_path / 'runs.db')}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    trained = preloaded.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "agent=linucb",
            "trainer.total_timesteps=5000",
            "eval.num_clients=50",
            "eval.horizon_days=7",
            "eval.num_seeds=1",
            f"tracking.uri={store}",
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert trained.returncode == 0, trained.stderr[-2000:]
    import mlflow

    mlflow.set_tracking_uri(store)
    run_id = mlflow.search_runs(experiment_names=["cadence"]).run_id[0]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'elsewhere.db'}")  # not where the run is
    logs = tmp_path / "logs.parquet"
    size = ["eval.num_clients=100", "eval.horizon_days=4", "eval.n_boot=10"]
    _run(
        "mode=record",
        f"record.out={logs}",
        f"record.policy=run:{run_id[:8]}",
        *size,
        f"tracking.uri={store}",
    )
    ids = _run(
        "mode=estimate",
        f"estimate.data={logs}",
        f"policies=[run:{run_id[:8]}]",
        "estimate.mlflow=false",
        f"tracking.uri={store}",
        *size,
    )
    assert ids == []

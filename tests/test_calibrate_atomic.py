"""A fit's preset, report and MLflow run are one unit: a failure at any step leaves none of them
and the same name works again, two fits of one name cannot both win, and a wrong ``policy=``
ends in one line that says what to do."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import polars as pl
import preloaded
import pytest

from agents.heuristics import HEURISTICS
from envs.config import load_setup
from evaluation.logs import write_logs
from evaluation.record import log_policy
from experiment.tracking import LOCKS, ROOT, setup_mlflow

PRESETS = ROOT / "conf" / "population"


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    """A small log of segment_rules with ε 0.3: 300 clients x 10 days."""
    frame = log_policy(HEURISTICS["segment_rules"](), load_setup(), 300, 10, seed=1, epsilon=0.3)
    return write_logs(frame, tmp_path_factory.mktemp("logs") / "logs.parquet")


@pytest.fixture
def name(request):
    """A preset name of this test's own, removed (with anything staged for it) afterwards."""
    own = "test_atomic_" + re.sub(r"[^A-Za-z0-9_]", "_", request.node.name)[:60]
    yield own
    for leftover in [PRESETS / f"{own}.yaml", *PRESETS.glob(f".{own}.yaml.*")]:
        leftover.unlink(missing_ok=True)


def _args(logs: Path | str, name: str, uri: str, *more: str) -> list[str]:
    return [
        "mode=fit",
        f"logs={logs}",
        "policy=segment_rules",
        "params=[env.response.open_base]",
        "trials=1",
        f"name={name}",
        f"tracking.uri={uri}",
        *more,
    ]


def _fit_runs(uri: str, name: str) -> list[str]:
    """Active (not deleted) runs of the fit ``name`` in the store."""
    setup_mlflow(uri, "cadence-realism")
    runs = mlflow.search_runs(experiment_names=["cadence-realism"])
    if not len(runs):
        return []
    return [r for r in runs["tags.mlflow.runName"] if str(r).startswith(f"fit {name}")]


def _one_error_line(err: str) -> str:
    """The one ``error:`` line on stderr (beside MLflow's and the progress bar's own lines)."""
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _nothing_staged(name: str, folder: Path) -> None:
    assert not (PRESETS / f"{name}.yaml").exists()
    assert not list(PRESETS.glob(f".{name}.yaml.*"))
    assert not list(folder.glob(f"{name}_report.md*")) and not list(folder.glob(f".{name}_*"))


@pytest.mark.slow  # two fits, each to an empty MLflow store
def test_a_fit_whose_report_cannot_be_written_leaves_nothing_and_a_rerun_works(
    logs, name, mlflow_store, capsys
):
    from calibrate import cli as main

    uri = mlflow_store
    # the same log through /proc/self/fd/<n>: readable, but no report can be created beside it
    fd = os.open(logs, os.O_RDONLY)
    try:
        assert main(_args(f"/proc/self/fd/{fd}", name, uri)) == 2
    finally:
        os.close(fd)
    line = _one_error_line(capsys.readouterr().err)
    assert f"report: cannot write /proc/self/fd/{name}_report.md" in line
    assert "nothing was kept" in line
    _nothing_staged(name, logs.parent)
    assert _fit_runs(uri, name) == []
    # the name is free again: the same fit from the log's own path succeeds
    assert main(_args(logs, name, uri)) == 0
    assert "wrote" in capsys.readouterr().out
    assert (PRESETS / f"{name}.yaml").read_text().startswith("# Fitted by python calibrate.py")
    report = logs.with_name(f"{name}_report.md")
    assert "| logs/click_rate |" in report.read_text()
    assert _fit_runs(uri, name) == [f"fit {name} from logs"]
    report.unlink()


@pytest.mark.slow  # a fit logged to an empty MLflow store, then to a fresh one
def test_a_fit_whose_mlflow_logging_fails_leaves_nothing(
    logs, name, tmp_path, mlflow_store, capsys
):
    from calibrate import cli as main

    uri = mlflow_store
    setup_mlflow(uri, "default")
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the artifact folder should be")
    client = mlflow.MlflowClient(uri)
    client.create_experiment("cadence-realism", artifact_location=str(blocker / "artifacts"))
    assert main(_args(logs, name, uri)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "mlflow: logging the fit failed" in line and f"name={name} may be used again" in line
    _nothing_staged(name, logs.parent)
    assert _fit_runs(uri, name) == []  # the half-logged run is deleted
    # a store that works takes the same name
    assert main(_args(logs, name, f"sqlite:///{tmp_path / 'other.db'}")) == 0
    assert (PRESETS / f"{name}.yaml").is_file()
    logs.with_name(f"{name}_report.md").unlink()


@pytest.mark.slow  # a calibrate.py subprocess (start-up, a fresh store) beside an in-process fit
def test_two_fits_of_one_name_at_once_one_wins_the_other_is_refused_by_name(
    logs, name, tmp_path, capsys
):
    from calibrate import cli as main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = preloaded.Popen(
        [sys.executable, str(ROOT / "calibrate.py"), *_args(logs, name, uri, "trials=4")],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lock = LOCKS / f"fit-{name}.lock"
    try:
        # the first fit's start-up (Python, Hydra, MLflow) can take a minute on a busy machine
        deadline, held = time.time() + 240, False
        while time.time() < deadline and first.poll() is None:
            if lock.is_file() and lock.read_text().strip() == str(first.pid):
                held = True
                break
            time.sleep(0.05)
        assert first.poll() is None, first.communicate()[1][-2000:]
        assert held, "the first fit did not take its lock within 240 s"
        # the second fit of the same name, while the first holds it
        assert main(_args(logs, name, uri, "overwrite=true")) == 2
        out, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    line = _one_error_line(capsys.readouterr().err)
    assert f"name: a fit named {name} is in progress" in line
    assert f"held by process {first.pid}" in line
    assert first.returncode == 0, err[-2000:]
    assert "(4 trials" in (PRESETS / f"{name}.yaml").read_text()  # the first fit's preset
    assert not lock.exists()  # released with the first fit
    # after it, the name is taken: refused unless overwrite=true
    assert main(_args(logs, name, uri)) == 2
    assert "exists; pick another name= or pass overwrite=true" in capsys.readouterr().err
    logs.with_name(f"{name}_report.md").unlink()


def test_policy_errors_say_what_to_do_in_one_line(logs, name, tmp_path, capsys):
    from calibrate import cli as main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main([*_args(logs, name, uri), "policy=nonexistent"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "policy must name the log's logging policy" in line and "'nonexistent'" in line
    assert "leave policy= out to replay the logged sends" in line
    assert main([*_args(logs, name, uri), "policy=ppo"]) == 2
    assert "policy: ppo learns in training" in _one_error_line(capsys.readouterr().err)
    # a log written (almost) deterministically by another policy: pscore 1 where it departs
    frame = log_policy(HEURISTICS["fixed_weekly"](), load_setup(), 300, 10, seed=1, epsilon=0.3)
    pscore = np.ones(len(frame))
    pscore[0] = 0.5
    other = write_logs(
        frame.with_columns(pl.Series("pscore", pscore)), tmp_path / "deterministic.parquet"
    )
    assert main(_args(other, name, uri)) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "exploration rate of" in line and "outside (0, 1]" in line
    assert "name the policy that wrote it, or leave policy= out" in line
    _nothing_staged(name, tmp_path)


@pytest.mark.slow  # a calibrate.py process: Hydra + MLflow start-up
def test_the_cli_refuses_an_unknown_policy_without_a_traceback(logs, tmp_path):
    done = preloaded.run(
        [
            sys.executable,
            str(ROOT / "calibrate.py"),
            *_args(logs, "unused", f"sqlite:///{tmp_path / 'm.db'}"),
            "policy=nonexistent",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "policy must name the log's logging policy" in _one_error_line(done.stderr)


@pytest.mark.slow  # fits on a simulated log
def test_a_log_is_checked_against_the_guardrails_of_the_setup_it_is_fitted_in(
    name, tmp_path, mlflow_store, capsys
):
    """A firm whose caps are looser than the defaults fits its log with its own caps: the same
    log is refused under the default caps (naming the rule) and accepted under its own."""
    from calibrate import cli as main

    looser = ["env.guardrails.max_per_week=7", "env.guardrails.channel_caps.email=7"]
    frame = log_policy(
        HEURISTICS["batch_and_blast"](), load_setup(overrides=looser), 200, 14, seed=3, epsilon=0.3
    )
    logs = write_logs(
        frame, tmp_path / "looser.parquet", guardrails=load_setup(overrides=looser).env.guardrails
    )
    uri = mlflow_store
    assert main(_args(logs, name, uri, "policy=batch_and_blast")) == 2
    assert "cap" in _one_error_line(capsys.readouterr().err)
    _nothing_staged(name, tmp_path)
    assert main(_args(logs, name, uri, "policy=batch_and_blast", *looser)) == 0

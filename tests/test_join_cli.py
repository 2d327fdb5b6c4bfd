"""join.py end to end: a simulated firm's export and decision log on disk -> the joined logged
dataset read_logs accepts (and evaluate.py mode=estimate reads); one-line refusals."""

from __future__ import annotations

import subprocess
import sys

import polars as pl
import preloaded
import pytest
from test_join import simulate_decisions

from evaluation.logs import read_logs
from loop.events import write_export
from loop.review import write_table
from serve.decisions import DecisionLog


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return preloaded.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def firm_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("firm")
    export, log, reviews, _ = simulate_decisions(n=200, days=10, seed=1)
    write_export(export, folder / "export")
    with DecisionLog(folder / "decisions", rows_per_file=500) as writer:
        writer.append(log)
    write_table(reviews, folder / "outcomes.parquet")
    return folder, log


@pytest.mark.slow
def test_join_command_writes_a_log_read_logs_accepts(firm_files):
    folder, log = firm_files
    out = folder / "joined.parquet"
    done = _run(
        "join.py",
        f"export={folder / 'export'}",
        f"decisions={folder / 'decisions'}",
        f"reviews={folder / 'outcomes.parquet'}",
        f"out={out}",
        "window_days=2",
        "seed=1",
    )
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}" in done.stdout
    logs = read_logs(out)
    assert logs["day"].max() == 8  # day 9's window (days 9..10) is still open
    assert logs["decision_id"].is_in(log["decision_id"].implode()).all()


@pytest.mark.slow  # a join.py process per case: Hydra start-up
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["window_days=0"], "window_days must be a whole number of days >= 1, got 0"),
        (["reward_preset=balanced"], "weighs outcomes no export holds"),
        (["reviews=/nonexistent/outcomes.csv"], "decision .* held for review and not approved"),
    ],
)
def test_join_command_refuses_in_one_line(firm_files, args, message):
    folder, _ = firm_files
    done = _run(
        "join.py",
        f"export={folder / 'export'}",
        f"decisions={folder / 'decisions'}",
        f"out={folder / 'refused.parquet'}",
        *args,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1
    assert pl.Series([done.stderr]).str.contains(message).item(), done.stderr
    assert not (folder / "refused.parquet").exists()


def test_join_command_needs_export_and_decisions():
    # a fresh process (join.py loads no MLflow: under a second), not the preloaded server: this
    # test runs in `make test-fast`, where nothing else would start the server
    done = subprocess.run(
        [sys.executable, "join.py", "export=somewhere"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and "decisions is required" in done.stderr


@pytest.mark.slow
def test_evaluate_estimates_from_the_joined_log(firm_files):
    folder, _ = firm_files
    out = folder / "joined_estimate.parquet"
    joined = _run(
        "join.py",
        f"export={folder / 'export'}",
        f"decisions={folder / 'decisions'}",
        f"reviews={folder / 'outcomes.parquet'}",
        f"out={out}",
        "seed=1",
    )
    assert joined.returncode == 0, joined.stderr
    done = _run(
        "evaluate.py",
        "mode=estimate",
        f"estimate.data={out}",
        "policies=[segment_rules]",
        "estimate.mlflow=false",
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "| segment_rules | snips |" in done.stdout

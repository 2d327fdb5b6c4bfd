"""A run id may be given by a unique prefix (at least MIN_PREFIX hex digits): find_run returns
the full run, refuses a prefix several runs share (naming them), and names the store it looked in
for an id nothing has or starts with."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys

import mlflow
import preloaded
import pytest

from experiment.tracking import MIN_PREFIX, ROOT, find_run, setup_mlflow
from simulate.config import ConfigError

FIRST = "abcdef1" + "0" * 25
SECOND = "abcdef02" + "0" * 24
THIRD = "abcdef02" + "1" * 24


def _rename(db: str, old: str, new: str) -> None:
    """Give a run a chosen id in the store itself (MLflow picks ids at random), in every table
    that names it, so two runs can share a prefix."""
    with sqlite3.connect(db) as con:
        for (table,) in con.execute("select name from sqlite_master where type='table'"):
            columns = {row[1] for row in con.execute(f"pragma table_info({table})")}
            for column in {"run_uuid", "run_id"} & columns:
                con.execute(f"update {table} set {column} = ? where {column} = ?", (new, old))


@pytest.fixture(scope="module")
def store(tmp_path_factory, empty_store) -> str:
    """A SQLite store holding three runs whose ids start with ``abcdef``; its URI."""
    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    shutil.copyfile(empty_store, db)
    uri = f"sqlite:///{db}"
    setup_mlflow(uri, "prefixes")
    client = mlflow.MlflowClient(uri)
    experiment = mlflow.get_experiment_by_name("prefixes").experiment_id
    for wanted in (FIRST, SECOND, THIRD):
        made = client.create_run(experiment, run_name=wanted[:8]).info.run_id
        _rename(str(db), made, wanted)
    return uri


def test_a_unique_prefix_finds_the_full_run(store):
    mlflow.set_tracking_uri(store)
    assert find_run(FIRST[:8], "run_id").info.run_id == FIRST
    assert find_run(FIRST[: MIN_PREFIX + 1], "run_id").info.run_id == FIRST
    assert find_run(THIRD[:9], "run_id").info.run_id == THIRD
    assert find_run(FIRST.upper()[:8], "run_id").info.run_id == FIRST
    assert find_run(SECOND, "run_id").info.run_id == SECOND  # the full id still works


def test_an_ambiguous_prefix_is_refused_naming_the_candidates(store):
    mlflow.set_tracking_uri(store)
    with pytest.raises(ConfigError) as refused:
        find_run("abcdef02", "policies")
    message = str(refused.value)
    assert message.startswith("policies: 'abcdef02' is the start of several run ids")
    assert SECOND in message and THIRD in message and FIRST not in message
    assert store in message


def test_an_unknown_id_names_the_store_it_looked_in(store):
    mlflow.set_tracking_uri(store)
    with pytest.raises(ConfigError, match=r"resume: no MLflow run 'abcdef99' in sqlite:///") as e:
        find_run("abcdef99", "resume")
    assert store in str(e.value) and "no run id there starts with it" in str(e.value)
    with pytest.raises(ConfigError, match="no MLflow run 'not-a-run'"):
        find_run("not-a-run", "run_id")


def test_a_prefix_shorter_than_the_minimum_is_refused_saying_the_minimum(store):
    mlflow.set_tracking_uri(store)
    with pytest.raises(ConfigError, match=f"at least {MIN_PREFIX} hex digits"):
        find_run(FIRST[: MIN_PREFIX - 1], "run_id")


def test_run_prefix_in_policies_loads_the_policy_under_its_full_id(store, tmp_path):
    from agents.config import AgentConfig
    from agents.registry import make_policy, save_policy
    from envs.config import Setup
    from experiment.policies import resolve_policy

    mlflow.set_tracking_uri(store)
    experiment = mlflow.get_experiment_by_name("prefixes").experiment_id
    saved = save_policy(make_policy(AgentConfig(name="segment_rules")), tmp_path / "policy")
    with mlflow.start_run(experiment_id=experiment, tags={"agent": "segment_rules"}) as run:
        mlflow.log_artifacts(str(saved), "policy")
    full = run.info.run_id
    policy, tags = resolve_policy(f"run:{full[:8]}", Setup())
    assert tags == {"source_run": full, "agent": "segment_rules"}
    assert policy.name == f"segment_rules@{full[:8]}"


def _finished_run(store: str, run_id: str) -> str:
    """A FINISHED run with the id ``run_id``."""
    client = mlflow.MlflowClient(store)
    experiment = mlflow.get_experiment_by_name("prefixes").experiment_id
    made = client.create_run(experiment, run_name="finished").info.run_id
    client.set_terminated(made, "FINISHED")
    _rename(store.removeprefix("sqlite:///"), made, run_id)
    return run_id


def _entry(script: str, *overrides: str, cwd) -> subprocess.CompletedProcess[str]:
    return preloaded.run(
        [sys.executable, str(ROOT / script), *overrides, f"hydra.run.dir={cwd}/hydra"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
    )


@pytest.mark.slow  # two entry points start: Hydra + MLflow
def test_train_resume_and_export_run_id_take_a_prefix_and_name_the_full_id(store, tmp_path):
    # starts the command line reads as numbers: 15e01131 as inf, 9e000001 as 9.0 (about 1 in 70
    # of MLflow's random ids starts with digits, one e and digits)
    full = _finished_run(store, "15e01131" + "a" * 24)
    done = _entry(
        "train.py", f"resume={full[:8]}", f"tracking.uri={store}", "tracking.experiment=prefixes",
        cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"resume: run {full} FINISHED; there is nothing to resume" in done.stderr
    other = _finished_run(store, "9e000001" + "b" * 24)
    done = _entry("export.py", f"run_id={other[:8]}", f"tracking.uri={store}", cwd=tmp_path)
    assert done.returncode != 0
    assert f"run_id: run {other} has no 'policy' artifact" in done.stderr

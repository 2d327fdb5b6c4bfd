"""Hydra configs compose, bad values stop before any work, and train.py / evaluate.py log real
MLflow runs (SQLite store in a temporary folder), read back with mlflow.search_runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import mlflow
import polars as pl
import preloaded
import pytest
from hydra import compose, initialize_config_dir

from envs.config import CONF_DIR, preset_names
from experiment.schema import register, validate_run

ROOT = Path(__file__).resolve().parents[1]
TINY = ["eval.num_clients=150", "eval.num_seeds=1", "eval.n_boot=20", "trainer.progress=false"]
GROUPS = ("env", "population", "scenario", "reward", "agent", "tracking", "launcher", "experiment")


def _compose(overrides: list[str]):
    register()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=False)


@pytest.mark.slow  # every preset of every group composed by Hydra
@pytest.mark.parametrize("group", GROUPS)
def test_every_config_in_conf_composes(group):
    names = preset_names(group)
    assert names, f"conf/{group} is empty"
    for name in names:
        cfg = _compose([f"{group}={name}"])
        run, setup = validate_run(cfg)
        if group == "agent":
            assert run.agent.name == name
        if group == "experiment":
            assert run.experiment_name == name


def test_default_config_is_the_documented_default():
    run, setup = validate_run(_compose([]))
    assert (run.agent.name, run.reward.name, run.scenario.name) == (
        "ppo_lagrangian",
        "balanced",
        "calm",
    )
    assert setup.env.num_clients == 256 and setup.env.horizon_days == 90


def _cli(
    script: str, args: list[str], tmp_path: Path, timeout: int = 600
) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT),
    }
    return preloaded.run(
        [sys.executable, str(ROOT / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


BAD_VALUES = [
    ("reward.churn=2", "reward.churn must be <= 0.0"),
    ("env.num_clients=0", "env.num_clients must be >= 1"),
    ("agent.learning_rate=-1", "agent.learning_rate must be >= 1e-07"),
    ("agent=sarsa", "Could not find 'agent/sarsa'"),
    ("trainer.total_timestep=10", "Key 'total_timestep' not in 'TrainerConfig'"),
    ("eval.baselines=[segment_rules,linucb]", "eval.baselines must name heuristics"),
]


@pytest.mark.parametrize(("override", "key"), BAD_VALUES)
def test_bad_value_is_refused_naming_the_key(override, key):
    # what train.py composes and checks before any work, in process (the command line's own
    # behaviour, one line and exit status 2 with nothing logged, is the next test's)
    with pytest.raises(Exception) as refused:
        validate_run(_compose([override]))
    said = "\n".join(str(e) for e in (refused.value, refused.value.__cause__) if e is not None)
    assert key in said


@pytest.mark.slow  # a subprocess per run: Hydra + MLflow start-up
@pytest.mark.parametrize(("override", "key"), [BAD_VALUES[0], BAD_VALUES[3]])
def test_bad_value_fails_fast_naming_the_key(override, key, tmp_path):
    done = _cli("train.py", [override], tmp_path, timeout=120)
    assert done.returncode != 0
    assert key in done.stderr + done.stdout
    assert not (tmp_path / "mlflow.db").exists()  # stopped before any work, nothing logged


def _runs(tmp_path: Path):
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["cadence"])


@pytest.mark.slow  # a subprocess per run: Hydra + MLflow start-up
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_train_then_evaluate_end_to_end(tmp_path):
    done = _cli(
        "train.py",
        ["agent=epsilon_greedy", "trainer.total_timesteps=5000", "env.num_clients=100", *TINY],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _runs(tmp_path)
    assert len(runs) == 1
    row = runs.iloc[0]
    assert row["status"] == "FINISHED"
    for metric in (
        "eval/value",
        "eval/normalized_value",
        "eval/retention",
        "eval/clicks_per_client",
        "eval/anxious_click_share",
        "eval/conversions_per_client",
        "eval/visits_per_client",
        "eval/incremental_visits_per_client",
        "eval/incremental_conversions_per_client",
        "eval/unsubscribes_per_client",
        "eval/messages_per_client_week",
        "eval/complaints_per_client",
        "eval/guardrail_violations",
        "fairness/urgent_gap",
        "fairness/volume_gap",
        "fairness/retention_gap",
        "train/reward_per_client_day",
    ):
        assert (
            f"metrics.{metric}" in runs.columns
            and row[f"metrics.{metric}"] == row[f"metrics.{metric}"]
        ), metric
    assert row["metrics.eval/guardrail_violations"] == 0
    # the margins over the best baseline heuristic, evaluated on the same clients, agree with the table
    assert row["tags.baseline"] == "segment_rules"
    table = pl.read_parquet(
        mlflow.artifacts.download_artifacts(
            run_id=row.run_id,
            artifact_path="evaluation/evaluation.parquet",
            dst_path=str(tmp_path / "dl"),
        )
    )
    for name in ("normalized_value", "retention", "anxious_click_share"):
        own, base = (
            table.filter((pl.col("policy") == p) & (pl.col("metric") == f"eval/{name}"))[
                "estimate"
            ][0]
            for p in ("epsilon_greedy", "segment_rules")
        )
        assert row[f"metrics.eval/margin/{name}"] == pytest.approx(own - base)
    assert "vs the best baseline segment_rules" in done.stdout
    for tag, value in (
        ("agent", "epsilon_greedy"),
        ("reward", "balanced"),
        ("scenario", "calm"),
        ("population", "default"),
        ("seed", "0"),
    ):
        assert row[f"tags.{tag}"] == value
    assert len(row["tags.git_commit"]) >= 7
    assert row["params.agent.name"] == "epsilon_greedy" and row["params.env.num_clients"] == "100"
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(row.run_id)}
    assert {"config.yaml", "policy", "evaluation"} <= artifacts
    evaluation = {a.path for a in mlflow.MlflowClient().list_artifacts(row.run_id, "evaluation")}
    assert {
        "evaluation/evaluation.md",
        "evaluation/evaluation.parquet",
        "evaluation/cadence.png",
    } <= evaluation

    done = _cli(
        "evaluate.py", [f"policies=[random,segment_rules,run:{row.run_id}]", *TINY], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _runs(tmp_path)
    children = runs[runs["tags.policy"].notna()]
    assert {
        "random",
        "segment_rules",
        f"epsilon_greedy@{row.run_id[:8]}",
        "no_send",
        "oracle",
        "deployable_ceiling",
    } == set(children["tags.policy"])
    parent = runs[runs["tags.comparison"] == "true"].iloc[0]
    assert (children["tags.mlflow.parentRunId"] == parent.run_id).all()
    assert children["metrics.eval/normalized_value"].notna().all()


@pytest.mark.slow  # a subprocess per run: Hydra + MLflow start-up
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_evaluate_refuses_unknown_policies(tmp_path):
    # the command line's one-line refusal is tested in test_evaluate_modes.py; here the checks
    # evaluate.py runs, in process, on its own store
    from evaluate import run_mode
    from simulate.config import ConfigError

    store = [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}", *TINY]
    with pytest.raises(ConfigError, match="unknown policy 'sarsa'"):
        run_mode(_compose(["policies=[random,sarsa]", *store]))
    with pytest.raises(ConfigError, match="no MLflow run '0123456789abcdef'"):
        run_mode(_compose(["policies=[run:0123456789abcdef]", *store]))


@pytest.mark.slow  # a subprocess per run: Hydra + MLflow start-up
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_a_sweep_has_one_parent_one_sweep_id_a_failed_job_and_a_crash_recorded_once(tmp_path):
    # one store for both sweeps: the second resumes a run the first finished (one train.py
    # start-up fewer than making that run on its own)
    done = _cli(
        "train.py",
        [
            "-m",
            "agent=segment_rules,fixed_weekly",
            "reward.churn=-25,5",
            f"hydra.sweep.dir={tmp_path / 'multirun' / 'sweep'}",
            *TINY,
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = _runs(tmp_path)
    parents = runs[runs["tags.sweep_parent"] == "true"]
    assert len(parents) == 1
    children = runs[runs["tags.mlflow.parentRunId"] == parents.iloc[0].run_id]
    assert len(children) == 4
    assert (
        children["tags.sweep_id"].nunique() == 1
        and parents.iloc[0]["tags.sweep_id"] == children["tags.sweep_id"].iloc[0]
    )
    assert sorted(children["status"]) == ["FAILED", "FAILED", "FINISHED", "FINISHED"]
    failed = children[children["status"] == "FAILED"]
    assert failed["tags.error"].str.contains("reward.churn must be <= 0.0").all()

    # a crash inside a sweep job (resuming a finished run) is recorded once
    finished = children[children["status"] == "FINISHED"]
    run_id = finished[finished["tags.agent"] == "segment_rules"].iloc[0].run_id
    failed_before = int((runs["status"] == "FAILED").sum())
    done = _cli(
        "train.py",
        ["-m", "agent=ppo", f"resume={run_id}", f"hydra.sweep.dir={tmp_path / 'sweep'}", *TINY],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]  # the sweep goes on
    runs = _runs(tmp_path)
    # the resumed run itself, not a second record
    assert int((runs["status"] == "FAILED").sum()) == failed_before + 1


@pytest.mark.slow
def test_runs_land_in_the_experiment_when_its_creation_races_another_job(tmp_path, monkeypatch):
    from mlflow.tracking._tracking_service.client import TrackingServiceClient

    from experiment.tracking import setup_mlflow

    uri = f"sqlite:///{tmp_path / 'race.db'}"
    mlflow.MlflowClient(uri).create_experiment("cadence")  # made by the job that won the race
    real = TrackingServiceClient.get_experiment_by_name
    calls = []

    def not_yet(self, name):  # the first look misses it, as if the other job had not finished
        calls.append(name)
        return None if len(calls) == 1 else real(self, name)

    monkeypatch.setattr(TrackingServiceClient, "get_experiment_by_name", not_yet)
    setup_mlflow(uri, "cadence")
    with mlflow.start_run() as run:
        pass
    assert len(calls) >= 2  # the race path was taken
    assert mlflow.get_experiment(run.info.experiment_id).name == "cadence"

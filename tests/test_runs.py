"""Run records fail closed: resume refuses what it cannot continue without touching it, restores
the run's own config and its training state, SIGTERM leaves a FAILED run with a checkpoint,
concurrent first runs on a fresh store all land, and a broken store is a clear error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import preloaded
import pytest

from agents.config import AgentConfig
from agents.sb3_agents import make_training_env, restore_training_state, training_state
from envs.config import load_setup
from experiment.reporting import (
    EXPERIMENT_NOTE,
    NOTE,
    describe_experiment,
    evaluation_clients,
    log_evaluation_input,
)
from experiment.tracking import setup_mlflow

ROOT = Path(__file__).resolve().parents[1]
TINY = ["eval.num_clients=100", "eval.num_seeds=1", "eval.n_boot=20", "trainer.progress=false"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT),
    }


def _train(tmp_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return preloaded.run(
        [sys.executable, str(ROOT / "train.py"), *args],
        cwd=tmp_path,
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _client(tmp_path: Path) -> mlflow.MlflowClient:
    return mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def _runs(tmp_path: Path):
    # through the same lock as train.py: a reader opening a store that a job is still
    # creating would race its schema migration
    setup_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}", "cadence")
    return mlflow.search_runs(experiment_names=["cadence"])


def test_training_state_round_trips_multipliers_and_normalisation():
    setup = load_setup()
    cfg = AgentConfig(name="ppo_lagrangian", normalize_reward=True)
    env = make_training_env(cfg, setup, 8)
    env.venv.multipliers.update(churn=1.25, anxiety=0.5)
    env.ret_rms.update(np.array([1.0, 3.0, 8.0]))
    state = json.loads(json.dumps(training_state(env)))
    fresh = make_training_env(cfg, setup, 8)
    assert training_state(fresh) != state
    restore_training_state(fresh, state)
    assert training_state(fresh) == state
    assert fresh.venv.multipliers == {"churn": 1.25, "anxiety": 0.5}


@pytest.mark.slow  # subprocesses: Hydra + MLflow start-up, a training run stopped by a signal
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_sigterm_marks_failed_leaves_a_checkpoint_and_resume_continues_it(tmp_path):
    command = [
        sys.executable,
        str(ROOT / "train.py"),
        "agent=ppo_lagrangian",
        "agent.normalize_reward=true",
        "env.num_clients=64",
        "trainer.total_timesteps=50000000",
        "trainer.checkpoint_every=4096",
        *TINY,
    ]
    job = preloaded.Popen(
        command, cwd=tmp_path, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and job.poll() is None:
            time.sleep(2)
            if (tmp_path / "mlflow.db").exists():
                runs = _runs(tmp_path)
                if (
                    len(runs)
                    and "tags.checkpoint_step" in runs
                    and runs["tags.checkpoint_step"].notna().any()
                ):
                    break
        assert job.poll() is None, job.stderr.read().decode()[-3000:]
        job.send_signal(signal.SIGTERM)
        _, stderr = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 128 + signal.SIGTERM, stderr.decode()[-3000:]
    run = _runs(tmp_path).iloc[0]
    run_id = run.run_id
    assert run["status"] == "FAILED" and run["tags.error"] == "stopped by SIGTERM"
    assert pd.notna(run["end_time"])  # ended, not left RUNNING
    client = _client(tmp_path)
    files = {a.path for a in client.list_artifacts(run_id, "checkpoints")}
    assert {"checkpoints/latest.zip", "checkpoints/state.json"} <= files
    state = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id,
                artifact_path="checkpoints/state.json",
                dst_path=str(tmp_path / "dl"),
                tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
            )
        ).read_text()
    )
    assert set(state) == {"multipliers", "return_normalisation"}
    assert state["return_normalisation"]["count"] > 1  # statistics gathered, not a fresh start
    stopped_at = int(client.get_run(run_id).data.tags["checkpoint_step"])

    # resuming with only resumable keys: its own config comes back, it finishes
    done = _train(tmp_path, f"resume={run_id}", f"trainer.total_timesteps={stopped_at + 2048}")
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = client.get_run(run_id)
    assert resumed.info.status == "FINISHED"
    assert resumed.data.tags["agent"] == "ppo_lagrangian"
    assert "eval/normalized_value" in resumed.data.metrics
    assert len(_runs(tmp_path)) == 1  # continued in place, no second run
    assert "resuming" in done.stdout


@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_resume_refuses_finished_unknown_and_checkpointless_runs_touching_nothing(tmp_path):
    from hydra import compose, initialize_config_dir

    from experiment.schema import register
    from simulate.config import ConfigError
    from train import prepare_resume

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    setup_mlflow(uri, "cadence")
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("cadence").experiment_id

    def run(status: str, checkpoint: bool) -> str:
        made = client.create_run(experiment, tags={"agent": "ppo"})
        client.log_metric(made.info.run_id, "eval/value", 1.5)
        if checkpoint:
            (tmp_path / "latest.zip").write_bytes(b"model")
            client.log_artifact(made.info.run_id, str(tmp_path / "latest.zip"), "checkpoints")
        client.set_terminated(made.info.run_id, status)
        return made.info.run_id

    register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"tracking.uri={uri}"])
    cases = [
        (run("FINISHED", True), [], "FINISHED; there is nothing to resume"),
        (run("FAILED", False), [], "has no checkpoint to resume from"),
        ("doesnotexist", [], "resume: no MLflow run 'doesnotexist'"),
        (
            run("FAILED", True),
            ["agent=linucb", "reward=engagement", "trainer.total_timesteps=9"],
            "\\['agent=linucb', 'reward=engagement'\\] cannot change on resume",
        ),
    ]
    for run_id, overrides, message in cases:
        before = None if run_id == "doesnotexist" else client.get_run(run_id)
        cfg.resume = run_id
        with pytest.raises(ConfigError, match=message):
            prepare_resume(cfg, [f"resume={run_id}", *overrides])
        if before is not None:
            after = client.get_run(run_id)
            assert after.info.status == before.info.status
            assert after.data.tags == before.data.tags
            assert after.data.metrics == before.data.metrics


@pytest.mark.slow  # eight rounds of six runs at once on one store
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_runs_logging_the_same_evaluation_dataset_at_once_all_land(tmp_path):
    # jobs evaluated on the same clients log the same dataset; MLflow inserts it when missing,
    # and jobs doing so at once raced (one failed: UNIQUE constraint failed: datasets...)
    setup_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}", "cadence")
    client = mlflow.MlflowClient()
    experiment = mlflow.get_experiment_by_name("cadence").experiment_id
    for trial in range(8):
        frame = evaluation_clients(100 + trial, 10, [0], "default", "calm")
        runs = [client.create_run(experiment).info.run_id for _ in range(6)]
        start, errors = threading.Barrier(len(runs)), []

        def log(run_id: str, frame=frame, start=start, errors=errors) -> None:
            start.wait()
            try:
                with mlflow.start_run(run_id=run_id):
                    log_evaluation_input(frame)
            except Exception as exc:  # noqa: BLE001  (the test reports whatever failed)
                errors.append(repr(exc)[:300])

        threads = [threading.Thread(target=log, args=(run_id,)) for run_id in runs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], (trial, errors)
        for run_id in runs:
            (logged,) = client.get_run(run_id).inputs.dataset_inputs
            assert logged.dataset.name.startswith(f"default population · {100 + trial} clients")


@pytest.mark.slow  # eight rounds of six jobs at once on one store
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_jobs_describing_one_experiment_at_once_all_land(tmp_path):
    # every job of a sweep sets the experiment's description; MLflow inserts the tag when
    # missing, and jobs doing so at once raced (UNIQUE constraint failed: experiment_tags...)
    setup_mlflow(f"sqlite:///{tmp_path / 'mlflow.db'}", "cadence")
    client = mlflow.MlflowClient()
    for trial in range(8):
        experiment = client.create_experiment(f"sweep-{trial}")
        start, errors = threading.Barrier(6), []

        def describe(experiment=experiment, start=start, errors=errors) -> None:
            start.wait()
            try:
                describe_experiment(experiment)
            except Exception as exc:  # noqa: BLE001  (the test reports whatever failed)
                errors.append(repr(exc)[:300])

        threads = [threading.Thread(target=describe) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [], (trial, errors)
        tags = client.get_experiment(experiment).tags
        assert tags[NOTE] == EXPERIMENT_NOTE
        assert tags["mlflow.experimentKind"] == "custom_model_development"


@pytest.mark.slow  # three train.py processes at once
def test_three_concurrent_first_runs_on_a_fresh_store_all_land(tmp_path):
    jobs = [
        preloaded.Popen(
            [sys.executable, str(ROOT / "train.py"), "agent=segment_rules", f"seed={i}", *TINY],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for i in range(3)
    ]
    errors = [job.communicate(timeout=600)[1].decode()[-2000:] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0, 0], errors
    runs = _runs(tmp_path)
    assert sorted(runs["tags.seed"]) == ["0", "1", "2"]
    assert (runs["status"] == "FINISHED").all()


@pytest.mark.slow  # a subprocess: Hydra + MLflow start-up
def test_a_corrupt_store_is_a_clear_error(tmp_path):
    (tmp_path / "mlflow.db").write_bytes(b"this is not a database" * 100)
    done = _train(tmp_path, "agent=segment_rules", *TINY)
    assert done.returncode != 0
    assert "tracking.uri: cannot use the MLflow store sqlite:///" in done.stderr
    assert "is it an MLflow SQLite file" in done.stderr
    assert (tmp_path / "mlflow.db").read_bytes() == b"this is not a database" * 100


def test_a_sigterm_during_a_store_write_is_raised_once_the_write_is_done():
    """A stop raised inside a write could leave its SQLite transaction, and the file's lock,
    open in the process, so that the run could not be marked FAILED: train.py holds a SIGTERM
    that arrives during a write and raises it right after."""
    import train

    previous = signal.signal(signal.SIGTERM, train._stop)
    done = []
    try:
        with pytest.raises(train.Stopped, match="SIGTERM"):
            with train._store_write():
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)  # the handler has run by now (between two bytecodes)
                done.append("the write went on")
        assert done == ["the write went on"]
        with pytest.raises(train.Stopped):  # outside a write: raised at once
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        assert train._held == {"holding": False, "pending": None}
    finally:
        signal.signal(signal.SIGTERM, previous)

"""A resume holds a lock on its run: a second resume of the same run is refused by name while the
first lives, and the lock ends with its holder, however that ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import preloaded
import pytest

from experiment.tracking import LOCKS, Busy, hold

ROOT = Path(__file__).resolve().parents[1]
TINY = ["eval.num_clients=100", "eval.num_seeds=1", "eval.n_boot=20", "trainer.progress=false"]
HOLDER = """
import sys, time
from pathlib import Path
from experiment.tracking import hold
with hold(sys.argv[1], "taken", folder=Path(sys.argv[2])):
    print("held", flush=True)
    time.sleep(120)
"""


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT),
    }


@pytest.mark.slow
def test_a_held_lock_is_refused_by_name_and_dies_with_a_killed_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, "resume-abc", str(tmp_path)],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(Busy, match=f"^run abc is busy \\(held by process {holder.pid};"):
            with hold("resume-abc", "run abc is busy", folder=tmp_path):
                pass
        holder.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel drops the lock
        holder.wait(timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert (tmp_path / "resume-abc.lock").exists()  # the file stays, but nothing holds it
    with hold("resume-abc", "run abc is busy", folder=tmp_path) as path:
        assert path.read_text().strip() == str(os.getpid())
    assert not path.exists()  # a clean release removes it


def test_lock_names_are_never_paths(tmp_path):
    for name in ("../x", "a/b", "", ".hidden", "x" * 129):
        with pytest.raises(ValueError, match="lock name must be"):
            with hold(name, "busy", folder=tmp_path):
                pass


@pytest.mark.slow  # three train.py processes: a tiny run, a resume of it, a second resume
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_a_second_resume_of_a_running_resume_is_refused_by_name(tmp_path):
    def train(*args: str, **kwargs) -> subprocess.Popen:
        return preloaded.Popen(
            [sys.executable, str(ROOT / "train.py"), *args],
            cwd=tmp_path,
            env=_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )

    # a run with a checkpoint (one rollout of 64 clients x 64 days), then recorded as FAILED
    made = train(
        "agent=ppo_lagrangian",
        "env.num_clients=64",
        "trainer.total_timesteps=4096",
        "trainer.checkpoint_every=4096",
        *TINY,
    )
    _, err = made.communicate(timeout=300)
    assert made.returncode == 0, err[-3000:]
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("cadence").experiment_id])
    run_id = run.info.run_id
    client.set_terminated(run_id, "FAILED")

    lock = LOCKS / f"resume-{run_id}.lock"
    first = train(f"resume={run_id}", "trainer.total_timesteps=50000000")
    second = None
    try:
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            if lock.is_file() and lock.read_text().strip() == str(first.pid):
                break
            time.sleep(0.1)
        assert first.poll() is None, first.communicate()[1][-3000:]
        second = train(f"resume={run_id}")
        _, err = second.communicate(timeout=300)
        assert second.returncode != 0
        assert f"resume: run {run_id} is being resumed by another train.py" in err
        assert f"held by process {first.pid}" in err
        assert first.poll() is None  # the first goes on, alone in the run
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    finally:
        for job in (first, second):
            if job is not None and job.poll() is None:
                job.kill()
    assert first.returncode == 128 + signal.SIGTERM
    assert not lock.exists()  # released as the first ended
    assert client.get_run(run_id).data.tags["error"] == "stopped by SIGTERM"
    with hold(f"resume-{run_id}", "still held"):  # and free for the next resume
        pass

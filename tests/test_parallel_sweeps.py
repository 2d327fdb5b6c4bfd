"""Parallel sweeps through a real MLflow tracking server: joblib on this machine, and a local
Ray cluster started on loopback. Slow (they start servers and worker processes)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import mlflow
import preloaded
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY = [
    "agent=segment_rules,fixed_weekly",
    "eval.num_clients=100",
    "eval.num_seeds=1",
    "eval.n_boot=20",
    "trainer.progress=false",
]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_on_a_free_port(
    start: Callable[[int], subprocess.Popen],
    ready: Callable[[str, subprocess.Popen, float], bool],
    seconds: float,
    what: str,
) -> tuple[subprocess.Popen, str]:
    """A server ``start`` launches on a free loopback port, once ``ready`` says it answers
    there; a port another test took between the pick and the bind (``ready`` False) is given
    up for a new one, three ports at most within ``seconds``."""
    deadline = time.time() + seconds
    for _ in range(3):
        port = _free_port()
        server, url = start(port), f"http://127.0.0.1:{port}"
        if ready(url, server, deadline):
            return server, url
        server.kill()
        server.wait(timeout=30)
    pytest.fail(f"{what} did not answer within {seconds} s (three ports tried)")


def _tracking_server(folder: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'server.db'}",
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            # one web worker (its default is four) and no job runners: the sweeps only log
            # runs, and each extra process starts a Python with MLflow imported
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={
            **os.environ,
            "PATH": f"{BIN}:{os.environ['PATH']}",
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        },
    )


def _answers(uri: str, server: subprocess.Popen, deadline: float) -> bool:
    """Whether ``server`` came up at ``uri``: its own process alive and an MLflow tracking API
    answering there (another test's server may have taken the port between its pick and the
    bind: that process then exits, and whatever answers is not this one)."""
    while time.time() < deadline and server.poll() is None:
        try:
            urllib.request.urlopen(
                f"{uri}/api/2.0/mlflow/experiments/get-by-name?experiment_name=Default", timeout=2
            )
            return server.poll() is None
        except OSError:
            time.sleep(0.25)
    return False


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory, empty_store):
    """One server for the module (its start-up is most of a test's time); each test logs to
    its own experiment. Its store starts as a copy of an empty one whose tables are made. A
    port another test took first is given up for a new one."""
    tmp_path = tmp_path_factory.mktemp("server")
    shutil.copyfile(empty_store, tmp_path / "server.db")
    server, uri = serve_on_a_free_port(
        lambda port: _tracking_server(tmp_path, port), _answers, 90, "the MLflow tracking server"
    )
    yield uri
    server.terminate()
    server.wait(timeout=30)


def _sweep(args: list[str], tmp_path: Path, uri: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = preloaded.run(
        [
            sys.executable,
            str(ROOT / "train.py"),
            "-m",
            f"tracking.uri={uri}",
            *args,
            *TINY,
            f"hydra.sweep.dir={tmp_path / 'multirun' / 'sweep'}",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]


def _check(uri: str, experiment: str) -> None:
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[experiment])
    parent = runs[runs["tags.sweep_parent"] == "true"]
    assert len(parent) == 1
    children = runs[runs["tags.mlflow.parentRunId"] == parent.iloc[0].run_id]
    assert set(children["tags.agent"]) == {"segment_rules", "fixed_weekly"}
    assert (children["status"] == "FINISHED").all()
    assert children["metrics.eval/normalized_value"].notna().all()
    assert children["tags.sweep_id"].nunique() == 1


def test_joblib_sweep_logs_through_tracking_server(tracking_server, tmp_path):
    _sweep(["launcher=joblib", "tracking.experiment=joblib-sweep"], tmp_path, tracking_server)
    _check(tracking_server, "joblib-sweep")


def test_ray_sweep_on_a_local_cluster(tracking_server, tmp_path):
    ray = str(BIN / "ray")
    for _ in range(3):  # a port another test took between its pick and Ray's bind: a new one
        port = _free_port()
        started = subprocess.run(
            [
                ray,
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={port}",
                "--num-cpus=2",
                "--include-dashboard=false",
                "--disable-usage-stats",
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if started.returncode == 0:
            break
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        _sweep(
            [
                "launcher=ray",
                f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
                "tracking.experiment=ray-sweep",
            ],
            tmp_path,
            tracking_server,
        )
        _check(tracking_server, "ray-sweep")
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)

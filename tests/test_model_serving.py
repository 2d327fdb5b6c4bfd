"""End to end: train, export with promote=true, `mlflow models serve` on loopback, real HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import preloaded
import pytest
from test_parallel_sweeps import serve_on_a_free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_served_champion_answers_http_requests(tmp_path):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PYTHONPATH": str(ROOT),
        "PATH": f"{BIN}:{os.environ['PATH']}",
    }

    def cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
        done = preloaded.run(
            [sys.executable, *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    cli(
        str(ROOT / "train.py"),
        "agent=linucb",
        "trainer.total_timesteps=4000",
        "env.num_clients=100",
        "eval.num_clients=100",
        "eval.num_seeds=1",
        "eval.n_boot=20",
        "trainer.progress=false",
    )
    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    run_id = mlflow.search_runs(experiment_names=["cadence"]).run_id[0]
    cli(str(ROOT / "export.py"), f"run_id={run_id}", f"out={tmp_path / 'export'}", "promote=true")
    assert {p.name for p in (tmp_path / "export").iterdir()} == {
        "policy.onnx",
        "manifest.json",
        "example_request.json",
    }
    version = mlflow.MlflowClient().get_model_version_by_alias("cadence-policy", "champion")
    assert version.run_id == run_id

    def serve(port: int) -> subprocess.Popen:
        return subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "models",
                "serve",
                "-m",
                "models:/cadence-policy@champion",
                "--env-manager",
                "local",
                "--host",
                "127.0.0.1",
                "-p",
                str(port),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def up(url: str, server: subprocess.Popen, deadline: float) -> bool:
        """The scoring server's own process alive and answering ``/ping`` and ``/version``
        (another test's server may take the port between its pick and the bind: this one then
        exits, and what answers there is not it)."""
        while time.time() < deadline and server.poll() is None:
            try:
                for path in ("/ping", "/version"):
                    urllib.request.urlopen(f"{url}{path}", timeout=2)
                return server.poll() is None
            except OSError:
                time.sleep(0.25)
        return False

    server, url = serve_on_a_free_port(serve, up, 120, "mlflow models serve")
    try:
        sys.path.insert(0, str(ROOT))
        from export import example_input
        from serve.runtime import PolicyRuntime

        frame = example_input(PolicyRuntime.load(tmp_path / "export"), rows=64)
        # vary the clients: goals, risk and recency, so the policy's choices differ by row
        goals = [c for c in frame.columns if c.startswith("goal_")]
        frame[goals] = 0.0
        for i in range(len(frame)):
            frame.loc[i, goals[i % len(goals)]] = 1.0
        frame["declared_risk"] = np.linspace(0.0, 1.0, len(frame), dtype=np.float32)
        frame["days_since_last_send"] = (np.arange(len(frame)) % 31).astype(np.float32)

        def post(df):
            body = json.dumps({"dataframe_split": df.to_dict(orient="split")}).encode()
            request = urllib.request.Request(
                f"{url}/invocations", body, {"Content-Type": "application/json"}
            )
            return json.loads(urllib.request.urlopen(request, timeout=30).read())

        answer = post(frame)["predictions"]
        assert len(answer) == len(frame)
        for row in answer:
            assert set(row) == {
                "decision_id",
                "slot",
                "tone",
                "channel",
                "content",
                "probability",
                "propensity",
                "reasons",
                "needs_review",
                "policy_slot",
                "policy_tone",
                "policy_channel",
                "policy_content",
                "policy_probability",
                "agree",
                "policy_version",
                "exploration",
                "mode",
            }
            assert row["propensity"] == 1.0 and row["exploration"] == "none" and row["agree"]
        # each client the policy messages, opted out of the channel it chose: none gets that channel
        chosen = {i: row["channel"] for i, row in enumerate(answer) if row["channel"] is not None}
        assert chosen, f"precondition: the policy messages some of these clients, got {answer[:3]}"
        for i, channel in chosen.items():
            frame.loc[i, f"opted_out_{channel}"] = 1.0
        again = post(frame)["predictions"]
        for i, channel in chosen.items():
            assert again[i]["channel"] != channel, (i, channel, again[i])
        with pytest.raises(urllib.error.HTTPError) as bad:
            post(frame.drop(columns=["market_stress"]))
        assert 400 <= bad.value.code < 500
        assert "market_stress" in bad.value.read().decode()
        # what pandas makes by default (float64, int64) is served
        for dtype in (np.float64, np.int64):
            assert len(post(frame.astype(dtype))["predictions"]) == len(frame)
        # refusals reach the caller naming the feature: unknown column, NaN, a half opt-out
        for broken, named in (
            (frame.assign(favourite_colour=1.0), "favourite_colour"),
            (frame.assign(declared_risk=np.nan), "declared_risk is not finite"),
            (frame.assign(opted_out_sms=0.5), "opted_out_sms = 0.5 in row 0"),
        ):
            with pytest.raises(urllib.error.HTTPError) as bad:
                post(broken)
            assert bad.value.code == 400 and named in bad.value.read().decode()
    finally:
        server.terminate()
        server.wait(timeout=30)

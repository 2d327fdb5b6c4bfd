"""The closed-loop study (studies/closed_loop.py): hidden worlds drawn reproducibly inside their
documented ranges, exploration that keeps to the guards, and a job that runs its rounds through
the real chain (serve, join, calibrate, train, gate, truth), records each as an MLflow parent run
with its steps, continues after its last finished round, and reports its table and plot."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import preloaded
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from envs.config import compose_conf, load_setup
from envs.spaces import multi_to_flat
from serve.decisions import log_files, read_decisions
from simulate.config import ConfigError
from studies import closed_loop

ROOT = Path(__file__).resolve().parents[1]

TINY = [
    "clients=400",
    "days=7",
    "budget=16384",  # one rollout of the default agent (256 clients x 64 days)
    "trials=2",
    "calibration_clients=200",
    "eval_clients=150",
    "eval_days=20",
    "eval_seeds=1",
    "progress=false",
]
# every challenger is promoted: the rules that decide are what this test watches happen
PROMOTE_ALL = [
    "margin=-1000",
    "min_ess=0",
    "harm_margin.unsubscribed=1000",
    "harm_margin.complaint=1000",
    "harm_margin.harmful=1000",
    "harm_margin.churned=1000",
]


def test_hidden_worlds_are_drawn_reproducibly_within_their_ranges():
    base = load_setup()
    a, drawn = closed_loop.hidden_world(1, base)
    b, again = closed_loop.hidden_world(1, base)
    other, _ = closed_loop.hidden_world(2, base)
    assert a == b and drawn == again and a != other
    for name, (how, low, high) in closed_loop.HIDDEN_RANGES.items():
        group, key = name.rsplit(".", 1)
        default = getattr(base.population if group == "population" else base.env.response, key)
        value = getattr(a.population if group == "population" else a.env.response, key)
        moved = value - default if how == "shift" else value / default
        assert low <= moved <= high, name
        assert value == drawn[name]
    shares = np.asarray(a.population.segment_probs)
    assert abs(shares.sum() - 1) < 1e-9 and (shares > 0).all()
    assert not np.allclose(shares, base.population.segment_probs)
    # the loop fits the response parameters, over ranges that hold every hidden draw
    for name, (low, high) in closed_loop.CALIBRATED.items():
        assert low < drawn[name] < high


@pytest.fixture(scope="module")
def day_one():
    """30 clients' first-day observations and masks (one world for every example)."""
    from envs.core import CadenceCore

    core = CadenceCore(load_setup(), 30, autoreset=False)
    obs = core.reset(0)
    return obs, core.joint_masks().copy()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32 - 1),
    epsilon=st.floats(0.0, 1.0),
    share=st.floats(0.0, 1.0),
    rows=st.integers(1, 30),
)
def test_explored_actions_keep_to_the_guards(day_one, seed, epsilon, share, rows):
    from agents.heuristics import BatchAndBlast, NoSend

    obs, masks = day_one[0][:rows], day_one[1][:rows].copy()
    rng = np.random.default_rng(seed)
    masks &= rng.random(masks.shape) < 0.5  # arbitrary further refusals
    masks[:, 0] = True  # no-send is always allowed
    soft = closed_loop.Explored(BatchAndBlast(), epsilon, seed, NoSend(), share)
    flat = multi_to_flat(soft.act(obs, masks))
    assert masks[np.arange(len(flat)), flat].all()


def _run(args: list[str], uri: str) -> subprocess.CompletedProcess:
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return preloaded.run(
        [sys.executable, "studies/closed_loop.py", *args, f"tracking.uri={uri}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def _settings(args: list[str], uri: str) -> closed_loop.ClosedLoopConfig:
    """The job's settings as the command composes and checks them (for the runs made in
    process: the command line itself is run once below and by the refusal test)."""
    run = OmegaConf.to_object(compose_conf("closed_loop", [*args, f"tracking.uri={uri}"]))
    closed_loop.check(run)
    return run


@pytest.mark.slow
def test_a_job_runs_its_rounds_resumes_and_reports(tmp_path, mlflow_store, empty_store, capsys):
    uri = mlflow_store
    out = f"out={tmp_path / 'study'}"
    first = _run([*TINY, *PROMOTE_ALL, "rounds=1", out], uri)  # the command, end to end
    assert first.returncode == 0, first.stderr[-3000:]
    state_file = tmp_path / "study" / "w0-s0" / "state.json"
    one = json.loads(state_file.read_text())
    assert [r["round"] for r in one["rounds"]] == [1]
    r1 = one["rounds"][0]
    # round 1: the firm's rules decide in shadow, the off-the-shelf policy runs as the canary
    assert (r1["serving"], r1["challenger"], r1["shadow"]) == (
        "segment_rules",
        "off_the_shelf",
        True,
    )
    assert r1["gate"]["cleared"] and r1["champion_after"] == "off_the_shelf"
    # a promotion is false exactly when the challenger is truly worse than what it replaced
    assert r1["false_promotion"] == (r1["truth"]["challenger_minus_champion"] < 0)
    # the same seed gives the same round (a fresh job in another folder, run in this process)
    again = closed_loop.run_job(
        _settings(
            [*TINY, *PROMOTE_ALL, "rounds=1", f"out={tmp_path / 'again'}"],
            f"sqlite:///{shutil.copyfile(empty_store, tmp_path / 'again.db')}",
        )
    )
    same = again["rounds"][0]
    assert {k: v for k, v in same.items() if k != "run_id"} == {
        k: v for k, v in r1.items() if k != "run_id"
    }
    log = read_decisions(log_files(tmp_path / "study" / "w0-s0" / "round1" / "decisions"))
    assert log["mode"].unique().to_list() == ["shadow"]
    assert log["exploration"].unique().to_list() == ["epsilon=0.05;policy_share=0.2"]

    # started again with more rounds: round 1 is kept as it was; round 2 has the promoted
    # policy decide and the challenger trained after round 1 as the canary
    capsys.readouterr()
    two = closed_loop.run_job(_settings([*TINY, *PROMOTE_ALL, "rounds=2", out], uri))
    assert "1 of 2 rounds done" in capsys.readouterr().out
    assert two == json.loads(state_file.read_text())
    assert two["rounds"][0] == r1
    r2 = two["rounds"][1]
    assert (r2["serving"], r2["challenger"], r2["shadow"]) == ("off_the_shelf", "r1", False)
    assert r2["champion_after"] == "r1"
    assert two["challenger"]["name"] == "r2"

    # each round is a parent run with one child run per step
    mlflow.set_tracking_uri(uri)
    runs = mlflow.search_runs(experiment_names=[closed_loop.EXPERIMENT], output_format="list")
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert sorted(r.info.run_name for r in parents) == [
        "world 0 · seed 0 · round 1",
        "world 0 · seed 0 · round 2",
    ]
    for parent in parents:
        steps = sorted(
            r.data.tags["step"]
            for r in runs
            if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
        )
        assert steps == ["calibrate", "gate", "join", "serve", "train", "truth"]
        assert "true/champion_normalized_value" in parent.data.metrics

    # other settings in the same folder are refused, naming them
    with pytest.raises(ConfigError, match="epsilon"):
        closed_loop.run_job(_settings([*TINY, *PROMOTE_ALL, "rounds=2", "epsilon=0.2", out], uri))

    # the direct agent at the default agent's budget (here the loop's own, which the cache holds)
    closed_loop.direct_at_budget(
        _settings([*TINY, *PROMOTE_ALL, "mode=direct", "direct_budget=16384", out], uri)
    )
    assert json.loads(state_file.read_text())["direct_at_budget"]["budget"] == 16_384

    closed_loop.report(_settings(["mode=report", out], uri))
    text = (tmp_path / "study" / "closed_loop.md").read_text()
    assert "False promotions:" in text and "| 0 | 0 | 2 | off_the_shelf | r1 |" in text
    assert "default agent's budget (16,384 client-days)" in text
    assert (tmp_path / "study" / "closed_loop.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "args, needle",
    [
        (["epsilon=0"], "epsilon must be in (0, 1]"),
        (["mode=train"], "mode must be one of"),
        (["+harm_margin.calm=1"], "harm_margin.calm: not a harm the gate reads"),
        (["days=3"], "days >= 7 are needed"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(args, needle):
    run = OmegaConf.to_object(compose_conf("closed_loop", args))
    with pytest.raises(ConfigError, match=re.escape(needle)):
        closed_loop.check(run)


@pytest.mark.slow  # an entry-point start
def test_the_command_line_refuses_in_one_line(tmp_path):
    done = _run(["mode=report", f"out={tmp_path / 'none'}"], f"sqlite:///{tmp_path / 'm.db'}")
    assert done.returncode == 2, done.stderr[-2000:]
    assert "holds no job" in done.stderr.strip().splitlines()[-1], done.stderr[-2000:]
    assert "Traceback" not in done.stderr

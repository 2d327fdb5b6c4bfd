"""decide.py: a day decided for a whole client base from a firm's event export, every decision
in the log with its propensity, the sends in the export's own format (they validate appended to
it), the same seed the same decisions."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import preloaded
import pytest

from agents.bandits import LinUCB
from agents.heuristics import SegmentRules
from decide import DecideConfig, DecideLogConfig, decide_day
from envs.config import load_setup
from loop.events import Export, validate_export, write_export
from loop.features import build_features
from loop.simulated import simulate_export
from serve.decisions import read_decisions
from serve.http import ExplorationConfig
from serve.onnx_export import export_policy

ROOT = Path(__file__).resolve().parents[1]
DAY = 12


@pytest.fixture(scope="module")
def firm(tmp_path_factory) -> Path:
    setup = load_setup(overrides=["env.horizon_days=60"])
    folder = tmp_path_factory.mktemp("firm")
    write_export(simulate_export(SegmentRules(), setup, num_clients=300, days=DAY, seed=4), folder)
    return folder


@pytest.fixture(scope="module")
def policy_export(tmp_path_factory) -> Path:
    policy = LinUCB(seed=0)
    policy.theta = np.random.default_rng(1).normal(0, 0.5, policy.theta.shape)
    folder = tmp_path_factory.mktemp("export") / "bandit"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_policy(policy, folder)
    return folder


def _config(policy_export: Path, firm: Path, log: Path, **exploration) -> DecideConfig:
    return DecideConfig(
        export_dir=str(policy_export),
        events_dir=str(firm),
        day=DAY,
        exploration=ExplorationConfig(**exploration),
        decision_log=DecideLogConfig(dir=str(log), rows_per_file=120),
        require_signature=False,
        batch_rows=70,
    )


def _decide(cfg: DecideConfig):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return decide_day(cfg)


def test_a_day_is_decided_for_every_client_and_logged(policy_export, firm, tmp_path):
    done = _decide(_config(policy_export, firm, tmp_path / "log", epsilon=0.3, seed=5))
    from loop.events import read_export

    export = read_export(firm)
    clients = build_features(export, DAY)["client_id"].to_list()
    log = read_decisions(tmp_path / "log")
    assert done.clients == len(clients) == log.height
    assert sorted(log["client_id"].to_list()) == sorted(clients)
    assert len(done.files) == -(-len(clients) // 120)  # rotated at 120 rows
    assert set(log["day"]) == {DAY} and set(log["exploration"]) == {"epsilon=0.3"}
    greedy = log["agree"].to_numpy()
    p = np.where(greedy, 0.7, 0) + 0.3 / log["allowed_actions"].to_numpy()
    np.testing.assert_allclose(log["propensity"].to_numpy(), p)
    # the sends, appended to the firm's own sends table, make a valid export that links back
    sends = done.sends
    assert sends.height == log.filter(pl.col("a_slot") > 0).height
    assert sends["send_id"].min() == export.sends["send_id"].max() + 1
    merged = Export(
        clients=export.clients,
        consents=export.consents,
        sends=pl.concat([export.sends, sends]),
        events=export.events,
        market=export.market,
    )
    validate_export(merged, "the export with the day's sends")
    assert set(sends["decision_id"]) <= set(log["decision_id"])


def test_the_same_seed_decides_the_same(policy_export, firm, tmp_path):
    a = _decide(_config(policy_export, firm, tmp_path / "a", temperature=0.5, seed=11))
    b = _decide(_config(policy_export, firm, tmp_path / "b", temperature=0.5, seed=11))
    columns = ["client_id", "a_slot", "a_tone", "a_channel", "a_content", "propensity"]
    assert (
        read_decisions(tmp_path / "a")
        .select(columns)
        .equals(read_decisions(tmp_path / "b").select(columns))
    )
    assert a.sends.drop("decision_id").equals(b.sends.drop("decision_id"))


@pytest.mark.slow  # decide.py processes: Hydra start-up
def test_the_command_names_what_is_missing_or_wrong(policy_export, firm, tmp_path):
    def run(*args: str) -> subprocess.CompletedProcess:
        return preloaded.run(
            [sys.executable, str(ROOT / "decide.py"), *args, f"hydra.run.dir={tmp_path}"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )

    missing = run(f"export_dir={policy_export}", f"events_dir={firm}")
    assert missing.returncode == 2 and "day is required" in missing.stderr
    bad = run(
        f"export_dir={policy_export}",
        f"events_dir={firm}",
        f"day={DAY}",
        "require_signature=false",
        "exploration.epsilon=2",
    )
    assert bad.returncode == 2 and "epsilon must be a number in [0, 1], got 2" in bad.stderr

"""Calibration from a logged dataset: the log's statistics, the simulated side, the fit's round
trip and its refusals."""

from __future__ import annotations

import polars as pl
import pytest

from agents.heuristics import HEURISTICS
from envs.config import load_setup
from evaluation.logs import write_logs
from evaluation.record import log_policy
from realism import fromlogs

TRUE = ["env.response.open_base=-0.9", "env.response.click_base=-3.0"]


def _hand_log() -> pl.DataFrame:
    """Two clients, ten days: client 0 gets an e-mail on days 0, 1, 2 and 9, client 1 a push on
    day 4 only; client 0 opens and clicks on day 2."""
    rows = []
    for client in (0, 1):
        for day in range(10):
            sent = (client == 0 and day in (0, 1, 2, 9)) or (client == 1 and day == 4)
            rows.append(
                {
                    "client_id": client,
                    "day": day,
                    "slot": 2 if sent else 0,
                    "tone": 0,
                    "channel": 0 if client == 0 else 1,
                    "content": 0,
                    "sent": sent,
                    "opened": client == 0 and day == 2,
                    "clicked": client == 0 and day == 2,
                    "unsubscribed": False,
                    "complaint": False,
                    "visited": day == 5,
                    "churned": False,
                }
            )
    return pl.DataFrame(rows)


def test_statistics_count_volume_gaps_and_quiet_days_as_documented(monkeypatch):
    monkeypatch.setattr(fromlogs, "MIN_SENDS", 1)
    monkeypatch.setattr(fromlogs, "MIN_DAYS", 1)
    stats = fromlogs.statistics(_hand_log())
    assert stats["logs/open_rate/email/morning"] == pytest.approx(1 / 4)
    assert stats["logs/open_rate/push/morning"] == 0.0
    assert stats["logs/click_rate"] == pytest.approx(1 / 5)
    assert stats["logs/click_to_open"] == 1.0
    # client 0's day-2 send is its third in 7 days (the click); day 9 follows a 7-day gap
    assert stats["logs/click_rate/volume_3"] == 1.0 and stats["logs/click_rate/volume_1"] == 0.0
    assert stats["logs/click_rate/gap_1_1"] == pytest.approx(1 / 2)
    assert stats["logs/click_rate/gap_4_7"] == 0.0
    assert "logs/click_rate/gap_8_14" not in stats  # no send 8 to 14 days after another
    # visits on days without a send: both clients visit on day 5, 15 quiet client-days
    assert stats["logs/visit_rate"] == pytest.approx(2 / 15)
    # thin cells are left out unless asked for
    monkeypatch.setattr(fromlogs, "MIN_SENDS", 3)
    thin = fromlogs.statistics(_hand_log())
    assert "logs/open_rate/push/morning" not in thin
    assert "logs/open_rate/push/morning" in fromlogs.statistics(_hand_log(), thin=True)


def test_the_simulated_side_matches_a_log_of_the_same_simulator():
    setup = load_setup()
    policy = HEURISTICS["segment_rules"]()
    frame = log_policy(policy, setup, 2000, 30, seed=1, epsilon=0.3)
    assert fromlogs.log_epsilon(frame, policy, setup) == pytest.approx(0.3)
    targets = fromlogs.targets(frame, n_boot=100)
    assert targets.names() and all(t.low <= t.target <= t.high for t in targets.targets)
    again = fromlogs.statistics(fromlogs.relog(setup, policy, 2000, 30, 7, 0.3), thin=True)
    met = sum(t.holds(again[t.statistic]) for t in targets.targets)
    assert met >= 0.8 * len(targets.targets), (met, len(targets.targets))
    replayed = fromlogs.replay(setup, frame, seed=7)
    assert set(fromlogs.NEEDED) <= set(replayed.columns)
    assert replayed["sent"].sum() <= frame["sent"].sum()  # opted-out or gone: not delivered


@pytest.mark.slow  # a 25-trial fit on a 2,000-client log
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_parameters_come_back_from_a_log_of_a_known_simulator(tmp_path):
    from calibrate import cli as main

    true_setup = load_setup(overrides=TRUE)
    frame = log_policy(HEURISTICS["segment_rules"](), true_setup, 2000, 30, seed=11, epsilon=0.3)
    logs = write_logs(frame, tmp_path / "logs.parquet")
    name = f"test_fromlogs_{tmp_path.name}"
    args = [
        "mode=fit",
        f"logs={logs}",
        "policy=segment_rules",
        "params=[env.response.open_base,env.response.click_base]",
        f"name={name}",
        "trials=60",  # the default open_base (-1.55) is 0.65 from the truth: 25 trials stopped at -1.22
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
    ]
    from experiment.tracking import ROOT

    preset = ROOT / "conf" / "population" / f"{name}.yaml"
    try:
        assert main(args) == 0
        text = preset.read_text()
    finally:
        preset.unlink(missing_ok=True)
    fitted = {
        line.split(":")[0].strip(): float(line.split(":")[1])
        for line in text.splitlines()
        if line.strip().startswith(("open_base:", "click_base:"))
    }
    assert abs(fitted["open_base"] - -0.9) <= 0.15, fitted
    assert abs(fitted["click_base"] - -3.0) <= 0.15, fitted
    report = (tmp_path / f"{name}_report.md").read_text()
    assert "| logs/click_rate |" in report and "simulator before" in report


def test_bad_logs_and_keys_are_refused_by_name(tmp_path, capsys):
    from calibrate import cli as main

    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    before = bad.read_bytes()
    args = [
        "mode=fit",
        "params=[env.response.open_base]",
        f"tracking.uri=sqlite:///{tmp_path}/m.db",
    ]
    assert main([*args, f"logs={bad}"]) == 2
    assert "logs:" in capsys.readouterr().err and bad.read_bytes() == before
    assert main([*args, "policy=segment_rules"]) == 2
    assert "policy: names the logging policy of logs=" in capsys.readouterr().err
    # a log that always took the named policy's own action was not logged by it with exploration
    from envs.spaces import JOINT_ACTIONS
    from evaluation.logs import ACTIONS
    from evaluation.offline import own_actions

    setup, policy = load_setup(), HEURISTICS["fixed_weekly"]()
    frame = log_policy(policy, setup, 200, 5, seed=0, epsilon=0.3)
    own = JOINT_ACTIONS[own_actions(policy, frame, setup)]
    greedy = frame.with_columns(pl.Series(c, own[:, i]) for i, c in enumerate(ACTIONS))
    with pytest.raises(ValueError, match="never departs from fixed_weekly's own action"):
        fromlogs.log_epsilon(greedy, policy, setup)
    logs = write_logs(frame, tmp_path / "logs.parquet")
    assert main([*args, f"logs={logs}", "name=x y"]) == 2

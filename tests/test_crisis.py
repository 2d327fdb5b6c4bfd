"""The crisis study: each policy with and without the circuit breaker on the same clients and
luck, under a scenario and under calm; its metrics, its refusals, and evaluate.py mode=monitor
logging them to MLflow with the timeline plot."""

from __future__ import annotations

import math

import mlflow
import numpy as np
import pytest

from agents.heuristics import HEURISTICS
from envs.config import load_setup
from evaluation.crisis import CrisisConfig, crisis_of, crisis_study
from simulate.config import ConfigError, ScenarioConfig, ScenarioEvent, validate
from simulate.labels import CONTENTS, SEGMENTS
from simulate.scenarios import ScenarioSchedule
from tests.test_experiments import _cli, _runs


@pytest.fixture(scope="module")
def misfire():
    setup = load_setup(scenario="misfire")
    return crisis_study(
        [HEURISTICS["segment_rules"]()], setup, num_clients=3000, horizon_days=60, seeds=[1000]
    )


def test_the_misfire_reaches_growth_investors_in_every_campaign_content_but_education():
    fx = ScenarioSchedule(load_setup(scenario="misfire").scenario).effects(30)
    growth = SEGMENTS.index("growth_investor")
    hit = fx.relevance_delta[growth] < 0
    assert [c for c, h in zip(CONTENTS, hit, strict=True) if h] == [
        "portfolio_summary",
        "product_offer",
        "market_update",
    ]
    assert (np.delete(fx.relevance_delta, growth, axis=0) == 0).all()  # nobody else
    before = ScenarioSchedule(load_setup(scenario="misfire").scenario).effects(28)
    assert (before.send_trust == 0).all() and (before.relevance_delta == 0).all()


def test_an_event_names_known_content_types():
    bad = ScenarioConfig("x", [ScenarioEvent(content=["education", "memes"])])
    with pytest.raises(ConfigError, match=r"content must list 'all' or content types .*memes"):
        validate(bad, "scenario")


def test_the_breaker_finds_the_misfire_at_once_and_keeps_clients(misfire):
    rows = {r["monitor"]: r for r in misfire.rows.iter_rows(named=True)}
    assert rows["on"]["detection_delay_days"] <= 2
    assert rows["off"]["detection_delay_days"] == rows["on"]["detection_delay_days"]  # same luck
    assert rows["on"]["switches"] >= 1 and rows["off"]["switches"] == 0
    # the misfire costs clients without the breaker, and fewer with it
    assert rows["off"]["excess_clients_lost"] > 0
    assert rows["on"]["clients_lost"] < rows["off"]["clients_lost"]
    assert misfire.cut("segment_rules", "clients_lost") > 0
    assert math.isnan(rows["off"]["false_alerts_per_100_days"])
    assert rows["on"]["false_alerts_per_100_days"] >= 0
    # the switch was about the touched segment, for the reason the monitor gave
    on = next(t for t in misfire.traces if t.arm == "on" and t.scenario == "misfire")
    switch = on.events.filter(on.events["event"] == "switch").row(0, named=True)
    assert switch["segment"] == "growth_investor" and "CUSUM" in switch["reason"]
    # before the misfire the two arms are the same run: same clients, same luck
    off = next(t for t in misfire.traces if t.arm == "off" and t.scenario == "misfire")
    start = crisis_of(load_setup(scenario="misfire").scenario).start_day
    for k in ("churned", "converted", "sent"):
        assert np.array_equal(on.daily[k][:start], off.daily[k][:start])


def test_the_study_is_the_same_for_the_same_seed(misfire):
    again = crisis_study(
        [HEURISTICS["segment_rules"]()],
        load_setup(scenario="misfire"),
        num_clients=3000,
        horizon_days=60,
        seeds=[1000],
        progress=False,
    )
    assert again.rows.equals(misfire.rows)


def test_the_study_refuses_a_crisis_it_cannot_watch_or_measure():
    setup = load_setup(scenario="misfire")
    policy = [HEURISTICS["segment_rules"]()]
    with pytest.raises(ConfigError, match="ends before the crisis window"):
        crisis_study(policy, setup, num_clients=100, horizon_days=40, seeds=[1])
    early = load_setup(scenario="misfire")
    early.scenario.events[0].start_day = 10
    with pytest.raises(ConfigError, match="before the monitor's baseline fills"):
        crisis_study(policy, early, num_clients=100, horizon_days=90, seeds=[1])
    # a shorter baseline lets the monitor watch it
    short = CrisisConfig()
    short.monitor.baseline_days = 7
    crisis_study(policy, early, short, num_clients=100, horizon_days=45, seeds=[1], progress=False)


@pytest.mark.slow  # a subprocess: Hydra + MLflow start-up
@pytest.mark.usefixtures("mlflow_store")  # an empty store, its tables made
def test_evaluate_mode_monitor_logs_the_crisis_metrics_and_the_timeline(tmp_path):
    done = _cli(
        "evaluate.py",
        [
            "scenario=market_shock",
            "mode=monitor",
            "policies=[segment_rules]",
            "eval.num_clients=500",
            "eval.num_seeds=1",
            "eval.horizon_days=60",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| segment_rules | on |" in done.stdout
    runs = _runs(tmp_path)
    parent = runs[runs["tags.crisis"] == "true"].iloc[0]
    children = runs[runs["tags.mlflow.parentRunId"] == parent.run_id]
    assert sorted(children["tags.monitor"]) == ["off", "on"]
    on = children[children["tags.monitor"] == "on"].iloc[0]
    for metric in ("detection_delay_days", "false_alerts_per_100_days", "clients_lost"):
        assert not math.isnan(on[f"metrics.crisis/{metric}"])
    artifacts = {a.path for a in mlflow.MlflowClient().list_artifacts(parent.run_id)}
    assert {"timeline_market_shock.png", "crisis.md", "alerts_and_switches.parquet"} <= artifacts


@pytest.mark.slow  # an evaluate.py process: Hydra + MLflow start-up
def test_evaluate_refuses_the_former_monitor_switch_naming_the_mode(tmp_path):
    done = _cli("evaluate.py", ["monitor=on", "policies=[segment_rules]"], tmp_path, timeout=120)
    assert done.returncode == 2
    assert "monitor= is gone: use mode=monitor" in done.stderr


def test_a_study_large_enough_to_find_the_misfire_says_nothing_of_its_size(misfire):
    found = misfire.support("segment_rules")
    assert found.segment == "growth_investor" and found.enough
    assert "too small" not in misfire.summary("segment_rules")
    assert "never found" not in misfire.summary("segment_rules")

"""A crisis study too small to find what it measures says so, with the clients it would need,
and gives no percentage that rests on a handful of events or on a breaker that never switched."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from agents.heuristics import HEURISTICS
from envs.config import load_setup
from evaluation.crisis import MIN_COUNT, Crisis, CrisisResult, crisis_signal, crisis_study
from evaluation.monitor import Monitor, MonitorConfig


@pytest.fixture(scope="module")
def small_shock() -> CrisisResult:
    """The market shock on 300 clients, one seed: the monitor cannot find it there."""
    setup = load_setup(scenario="market_shock")
    policy = HEURISTICS["segment_rules"]()
    return crisis_study([policy], setup, num_clients=300, horizon_days=60, seeds=[1000])


def test_a_study_too_small_to_find_its_crisis_says_so_and_names_the_clients_needed(small_shock):
    found = small_shock.support("segment_rules")
    assert found.segment == "all" and 250 < found.touched <= 300
    assert found.needed == pytest.approx(math.sqrt(2 * Monitor(MonitorConfig()).threshold))
    assert not found.enough and found.needed_clients > 300
    line = small_shock.summary("segment_rules")
    assert "the crisis was never found in 1 of 1 seed" in line
    assert "the study is too small to find it" in line
    assert f"at least {found.needed_clients:,} clients would be needed" in line
    assert "%" not in line and "nan" not in line  # no cut from a breaker that never switched
    assert "the breaker never switched, so both arms ran alike" in line


def test_the_signal_is_the_crisis_against_calm_in_the_monitors_noise():
    calm = np.full(30, 10.0)
    assert crisis_signal(calm, calm, "up", 21, 30) == 0.0
    assert crisis_signal(calm, calm * 2, "down", 21, 30) == 0.0  # a rise is no fall
    one_day = crisis_signal(calm, calm * 2, "up", 21, 1)
    assert one_day == pytest.approx(10 / math.sqrt(10 * (1 + 1 / 21)))
    assert crisis_signal(calm, calm * 2, "up", 21, 30) > one_day  # evidence accumulates
    assert crisis_signal(calm, calm / 2, "down", 21, 30) > 0


def _rows(switches: float, **sums: tuple[float, float]) -> CrisisResult:
    rows = [
        {"policy": "p", "monitor": arm, "seed": 0, "switches": switches * (arm == "on")}
        | {metric: pair[i] for metric, pair in sums.items()}
        for i, arm in enumerate(("on", "off"))
    ]
    return CrisisResult(Crisis("misfire", 29, 43, "growth_investor"), [], pl.DataFrame(rows))


def test_a_cut_needs_min_count_events_without_the_breaker():
    few = _rows(2, clients_lost=(30.0, 50.0), anxious_clicks=(2.0, MIN_COUNT - 1.0))
    assert few.summary("p") == (
        "p: the breaker cut clients lost by 40%; 2 anxious clicks with the breaker and "
        f"{MIN_COUNT - 1} without it (too few for a percentage: {MIN_COUNT} needed)"
    )
    idle = _rows(0, clients_lost=(4.0, 4.0), anxious_clicks=(0.0, 0.0))
    assert idle.summary("p") == (
        "p: the breaker never switched, so both arms ran alike; 4 clients lost; "
        "no anxious clicks in either arm"
    )

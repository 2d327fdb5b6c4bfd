"""The circuit breaker: a tripped segment gets the fallback and only it, holds, returns when its
metric is back in band, logs every switch and return; the fallback never offers products; a
rollout drives the breaker through its hooks."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from agents.base import Policy
from agents.heuristics import HEURISTICS
from envs.features import FEATURE_NAMES
from envs.spaces import JOINT_ACTIONS
from evaluation.breaker import BreakerConfig, CircuitBreaker, SafeFallback
from evaluation.monitor import MonitorConfig
from simulate.labels import CONTENTS, SEGMENTS, TONES

N_PER = 400


def _obs(weekday: int) -> np.ndarray:
    """N_PER clients of each declared segment and N_PER undeclared, on ``weekday``."""
    obs = np.zeros((N_PER * (len(SEGMENTS) + 1), len(FEATURE_NAMES)), dtype=np.float32)
    for i, seg in enumerate(SEGMENTS):
        obs[i * N_PER : (i + 1) * N_PER, FEATURE_NAMES.index(f"goal_{seg}")] = 1
    obs[
        :,
        FEATURE_NAMES.index(
            f"weekday_{['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'][weekday]}"
        ),
    ] = 1
    return obs


def _outcomes(rng, n: int, unsub: np.ndarray) -> dict[str, np.ndarray]:
    out = {k: np.zeros(n, bool) for k in ("clicked", "complaint", "anxious_click", "churned")}
    out["sent"] = np.ones(n, bool)  # every client gets a message every day
    out["unsubscribed"] = rng.random(n) < unsub
    out["visited"] = rng.random(n) < 0.05
    return out


class Always(Policy):
    """Sends everyone the same message every day: an early e-mail product offer, informative."""

    name = "always"

    def act(self, obs, masks):
        wanted = JOINT_ACTIONS[3]  # masks allow everything in these tests
        return np.tile(wanted, (len(obs), 1))


def test_a_segment_switches_on_an_alert_holds_and_returns_with_every_event_logged():
    breaker = CircuitBreaker(
        Always(), monitor=MonitorConfig(baseline_days=7), cfg=BreakerConfig(hold_days=5)
    )
    rng = np.random.default_rng(0)
    masks = np.ones((N_PER * 5, len(JOINT_ACTIONS)), dtype=bool)
    saver = np.arange(N_PER * 3, N_PER * 4)
    switched_on = returned_on = None
    for day in range(60):
        obs = _obs(day % 7)
        actions = breaker.act(obs, masks)
        bad = 20 <= day < 30  # saver/debt clients opt out ten times as often for ten days
        unsub = np.full(len(obs), 0.002)
        unsub[saver] = 0.02 if bad else 0.002
        if "saver_debt" in breaker.tripped:
            # only the tripped segment gets the fallback: its weekly message, and one at once
            fresh = breaker.tripped["saver_debt"] == day - 1  # switched after yesterday
            fallback = SafeFallback().act(obs[saver], masks[saver], np.full(len(saver), fresh))
            assert np.array_equal(actions[saver], fallback)
            assert (actions[saver, 0] > 0).all() == (day % 7 in (0, 3) or fresh)
            others = np.setdiff1d(np.arange(len(obs)), saver)
            assert (actions[others] == JOINT_ACTIONS[3]).all()
        breaker.after_day(day, _outcomes(rng, len(obs), unsub), np.ones(len(obs), bool))
        if switched_on is None and "saver_debt" in breaker.tripped:
            switched_on = day
        if switched_on is not None and returned_on is None and "saver_debt" not in breaker.tripped:
            returned_on = day
    assert switched_on is not None and 20 <= switched_on <= 23, switched_on
    assert returned_on is not None and returned_on >= 30  # held until the rate fell back
    log = breaker.event_log()
    saver_events = log.filter(log["segment"] == "saver_debt")
    assert saver_events["event"].to_list()[:2] == ["switch", "return"]
    assert "unsubscribe_rate up" in saver_events["reason"][0]
    assert saver_events["reason"][1] == "back within band for 5 days"


def test_a_segment_tripped_by_hand_stays_until_released_by_hand():
    breaker = CircuitBreaker(HEURISTICS["segment_rules"](), cfg=BreakerConfig(hold_days=2))
    breaker.trip("retirement", day=0)
    rng = np.random.default_rng(1)
    for day in range(10):
        obs = _obs(day % 7)
        breaker.act(obs, np.ones((len(obs), len(JOINT_ACTIONS)), dtype=bool))
        breaker.after_day(
            day, _outcomes(rng, len(obs), np.full(len(obs), 0.002)), np.ones(len(obs), bool)
        )
    assert "retirement" in breaker.tripped
    breaker.release("retirement", day=10)
    assert breaker.event_log()["reason"].to_list() == ["by hand", "by hand"]
    with pytest.raises(ValueError, match="unknown segment 'vip'"):
        breaker.trip("vip", day=0)


def test_the_fallback_is_reassuring_educational_twice_a_week_and_offers_nothing():
    fallback = SafeFallback()
    masks = np.ones((N_PER * 5, len(JOINT_ACTIONS)), dtype=bool)
    sends = []
    for weekday in range(7):
        actions = fallback.act(_obs(weekday), masks)
        sends.append((actions[:, 0] > 0).mean())
        sent = actions[actions[:, 0] > 0]
        assert (sent[:, 1] == TONES.index("reassuring")).all()
        assert (sent[:, 3] == CONTENTS.index("education")).all()
    assert sends == [1, 0, 0, 1, 0, 0, 0]  # twice a week, Monday and Thursday
    with pytest.raises(ValueError, match="sends no product offers"):
        SafeFallback(content="product_offer")


def test_a_rollout_drives_the_breaker_and_starts_it_afresh_each_time():
    from envs.config import load_setup
    from evaluation.rollout import rollout

    breaker = CircuitBreaker(HEURISTICS["segment_rules"]())
    breaker.trip("retirement", day=0)
    first = rollout(breaker, load_setup(), 300, 20, seed=0)
    assert not breaker.tripped  # start_rollout forgot the trip
    assert len(breaker.monitor.series[("retirement", "churn_rate", "up")].counts) == 20
    again = rollout(breaker, load_setup(), 300, 20, seed=0)
    assert np.array_equal(first.value, again.value) and breaker.name == "segment_rules+breaker"


def test_a_segment_that_trips_again_soon_after_returning_holds_twice_as_long():
    # the policy's messages to saver/debt clients misfire from day 20 on and never stop; the
    # fallback's do not: on the fallback the segment calms, back on the policy it trips again
    breaker = CircuitBreaker(
        Always(), monitor=MonitorConfig(baseline_days=7), cfg=BreakerConfig(hold_days=5)
    )
    rng = np.random.default_rng(2)
    masks = np.ones((N_PER * 5, len(JOINT_ACTIONS)), dtype=bool)
    saver = np.arange(N_PER * 3, N_PER * 4)
    for day in range(70):
        obs = _obs(day % 7)
        actions = breaker.act(obs, masks)
        policy_message = (actions == JOINT_ACTIONS[3]).all(axis=1)
        unsub = np.full(len(obs), 0.002)
        unsub[saver] = np.where(policy_message[saver] & (day >= 20), 0.03, 0.002)
        outcomes = _outcomes(rng, len(obs), unsub)
        outcomes["sent"] = actions[:, 0] > 0
        breaker.after_day(day, outcomes, np.ones(len(obs), bool))
    log = breaker.event_log().filter(pl.col("segment") == "saver_debt")
    switches = log.filter(pl.col("event") == "switch")["day"].to_list()
    returns = log.filter(pl.col("event") == "return")["day"].to_list()
    assert len(switches) >= 3 and len(returns) >= 2, log
    # each return holds at least as long as the last doubled hold: 5, then 10, then 20 days
    assert returns[0] - switches[0] + 1 >= 5
    assert returns[1] - switches[1] + 1 >= 10
    assert "again" in log.filter(pl.col("event") == "switch")["reason"][1]
    assert switches[1] - returns[0] <= 2  # found again at once: the baseline is the old one


def test_two_segments_on_the_fallback_at_once_put_every_client_on_it():
    breaker = CircuitBreaker(Always(), monitor=MonitorConfig(baseline_days=7))
    rng = np.random.default_rng(6)
    masks = np.ones((N_PER * 5, len(JOINT_ACTIONS)), dtype=bool)
    hit = np.r_[np.arange(0, N_PER), np.arange(N_PER * 3, N_PER * 4)]  # retirement, saver/debt
    for day in range(30):
        obs = _obs(day % 7)
        actions = breaker.act(obs, masks)
        if "all" in breaker.tripped:
            # the day after: every client, undeclared too, gets the fallback's first message
            assert (actions[:, 0] > 0).all()
            assert (actions[:, 1] == TONES.index("reassuring")).all()
            assert (actions[:, 3] == CONTENTS.index("education")).all()
            break
        unsub = np.full(len(obs), 0.002)
        unsub[hit] = 0.02 if day >= 20 else 0.002
        breaker.after_day(day, _outcomes(rng, len(obs), unsub), np.ones(len(obs), bool))
    else:
        pytest.fail(f"never escalated: {breaker.event_log()}")
    log = breaker.event_log()
    assert set(log["segment"]) == {"retirement", "saver_debt", "all"}
    assert log.filter(pl.col("segment") == "all")["reason"][0] == (
        "2 segments on the fallback: retirement, saver_debt"
    )

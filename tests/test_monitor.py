"""The crisis monitor on synthetic streams with known change points: false alarms within the
budget its threshold promises, detection delays as the CUSUM's drift predicts, alerts named and
logged, and the same monitor over a logged dataset."""

from __future__ import annotations

import math

import numpy as np
import pytest

from evaluation.monitor import (
    METRICS,
    SEGMENT_NAMES,
    WATCHED,
    Monitor,
    MonitorConfig,
    day_counts,
    segments_of,
)

RATES = {
    "unsubscribed": 0.002,
    "complaint": 0.001,
    "anxious_click": 0.004,
    "churned": 0.001,
    "clicked": 0.025,
}
VISIT = 0.05
N = 2000  # living clients per segment and day


def _stream(
    monitor: Monitor,
    days: int,
    rng,
    change_day=None,
    factor=1.0,
    segment="saver_debt",
    weekend: float = 1.0,
    wobble: float = 0.0,
):
    """Binomial counts for every series; from ``change_day`` the opt-out rate of ``segment`` is
    ``factor`` times its base; organic visits are ``weekend`` times as likely on days 5 and 6 of
    each week, and each day's visit rate is off by a factor exp(N(0, ``wobble``)) shared by the
    segment's clients (a day-to-day swing a binomial does not have). Returns the day of the first
    alert on that series (or None)."""
    first = None
    for day in range(days):
        counts = {}
        for seg in SEGMENT_NAMES:
            for outcome, p in RATES.items():
                if outcome == "unsubscribed" and seg == segment and change_day is not None:
                    p = p * factor if day >= change_day else p
                counts[(seg, outcome)] = (float(rng.binomial(N, p)), float(N))
            visit = VISIT * (weekend if day % 7 >= 5 else 1.0) * math.exp(wobble * rng.normal())
            counts[(seg, "visited")] = (float(rng.binomial(N, visit)), float(N))
        for alert in monitor.update(day, counts):
            if (alert.segment, alert.metric) == (segment, "unsubscribe_rate") and first is None:
                first = day
    return first


@pytest.mark.slow  # 60 monitored streams of 100 days
def test_false_alerts_stay_within_the_budget_the_threshold_promises():
    cfg = MonitorConfig(false_alarms=1.0, horizon_days=100)
    total = 0
    runs = 60
    for seed in range(runs):
        monitor = Monitor(cfg)
        _stream(monitor, 100, np.random.default_rng(seed))
        total += len(monitor.alerts)
    series = Monitor(cfg).series
    assert len(series) == len(WATCHED) * len(METRICS)
    # two CUSUMs (a doubling and an abrupt jump) per rate, one per visit series
    statistics = sum(1 if key[1] == "visit_rate" else 2 for key in series)
    assert Monitor(cfg).threshold == pytest.approx(math.log(statistics * 100 / 1.0))
    # the bound is for a known baseline; the estimated one adds a little, the bound's slack covers it
    assert total / runs <= cfg.false_alarms, total / runs


@pytest.mark.slow
@pytest.mark.parametrize(
    ("swing", "first_seed"),
    [
        # visits keep a weekly rhythm of their own (weekends 1.6 times as many)
        ({"weekend": 1.6}, 500),
        # organic visits swing from day to day together (news, weather, pay day): ±10 % a day
        # on 100 visits a day is twice the binomial noise; the dispersion the baseline measures
        # keeps the false alerts within budget (0.3 a run), where a plain binomial CUSUM
        # raised 1.5 a run
        ({"wobble": 0.1}, 900),
    ],
    ids=["weekly-rhythm", "day-to-day-swing"],
)
def test_visits_that_swing_without_a_change_stay_within_the_budget(swing, first_seed):
    cfg = MonitorConfig(false_alarms=1.0, horizon_days=100)
    alerts = 0
    for seed in range(30):
        monitor = Monitor(cfg)
        _stream(monitor, 100, np.random.default_rng(first_seed + seed), **swing)
        alerts += sum(a.metric == "visit_rate" for a in monitor.alerts)
    assert alerts / 30 <= cfg.false_alarms, alerts / 30


@pytest.mark.slow
def test_a_tripled_opt_out_rate_is_found_about_when_the_drift_predicts():
    cfg = MonitorConfig()
    delays = []
    for seed in range(40):
        monitor = Monitor(cfg)
        first = _stream(monitor, 60, np.random.default_rng(100 + seed), 30, 3.0)
        assert first is not None and first >= 30, first  # never before the change
        delays.append(first - 30 + 1)  # days of changed data seen when the alert came
    p0 = RATES["unsubscribed"]
    p1, true = p0 * cfg.shift, p0 * 3.0
    drift = N * (true * math.log(p1 / p0) + (1 - true) * math.log((1 - p1) / (1 - p0)))
    theory = Monitor(cfg).threshold / drift
    assert 0.5 * theory <= np.mean(delays) <= 2.0 * theory + 1, (np.mean(delays), theory)


def test_an_alert_names_its_series_and_the_log_holds_it():
    monitor = Monitor(MonitorConfig(baseline_days=5, guard_days=1))
    rng = np.random.default_rng(0)
    _stream(monitor, 30, rng, change_day=15, factor=10.0)
    log = monitor.alert_log()
    row = log.filter((log["segment"] == "saver_debt") & (log["metric"] == "unsubscribe_rate"))
    assert row.height == 1 and row["day"][0] >= 15
    assert row["jump"][0] > 3 and row["statistic"][0] > row["threshold"][0]
    # in alert, the series raises nothing new and its baseline is the one before the change
    key = ("saver_debt", "unsubscribe_rate", "up")
    assert key in monitor.in_alert and monitor.baseline(key) == pytest.approx(row["baseline"][0])
    monitor.release(key)
    assert key not in monitor.in_alert and monitor.series[key].statistic == 0.0


def _day(rng, visit: float = VISIT, saver_unsub: float = RATES["unsubscribed"]) -> dict:
    """One day's counts of every segment (``_stream`` in one day)."""
    counts = {}
    for seg in SEGMENT_NAMES:
        for outcome, p in RATES.items():
            if outcome == "unsubscribed" and seg == "saver_debt":
                p = saver_unsub
            counts[(seg, outcome)] = (float(rng.binomial(N, p)), float(N))
        counts[(seg, "visited")] = (float(rng.binomial(N, visit)), float(N))
    return counts


def test_a_change_every_segment_shares_is_seen_on_everyone_together_first():
    # visits up by a quarter everywhere: slow to show in one segment's series, plain on the
    # five segments together
    found = []
    for seed in range(10):
        monitor, rng = Monitor(), np.random.default_rng(700 + seed)
        for day in range(60):
            alerts = monitor.update(day, _day(rng, VISIT * (1.25 if day >= 30 else 1.0)))
            if alerts:
                found.append((day, alerts[0].segment, alerts[0].metric))
                break
    assert len(found) == 10 and all(day >= 30 and m == "visit_rate" for day, _, m in found)
    assert sum(seg == "all" for _, seg, _ in found) >= 8, found
    assert np.mean([day - 30 for day, _, _ in found]) <= 3, found


def test_a_returned_series_is_held_to_its_old_baseline_and_found_again_at_once():
    monitor, rng = Monitor(), np.random.default_rng(3)
    key = ("saver_debt", "unsubscribe_rate", "up")
    alerts = []
    for day in range(70):
        bad = day >= 30  # the change never ends
        if day == 45:
            before = monitor.baseline(key)
            monitor.release(key)
            # the window still holds the changed days: the baseline stays the old one
            assert monitor.baseline(key) == before
        today = _day(rng, saver_unsub=RATES["unsubscribed"] * (6 if bad else 1))
        alerts += [(day, a.segment) for a in monitor.update(day, today) if a.metric == key[1]]
    days = [day for day, seg in alerts if seg == "saver_debt"]
    assert len(days) == 2 and 30 <= days[0] <= 32 and 45 <= days[1] <= 46, alerts


def test_a_paused_segment_is_counted_but_not_tested_and_its_days_stay_out_of_baselines():
    monitor, rng = Monitor(), np.random.default_rng(4)
    key = ("saver_debt", "unsubscribe_rate", "up")
    for day in range(60):
        paused = {"saver_debt"} if 30 <= day < 45 else set()
        # on the fallback the segment's opt-outs run at ten times the rate: not the policy's
        rate = RATES["unsubscribed"] * (10 if paused else 1)
        assert not monitor.update(day, _day(rng, saver_unsub=rate), paused)
    assert monitor.series[key].paused[30:45] == [True] * 15
    assert len(monitor.series[key].counts) == 60
    assert monitor.baseline(key) == pytest.approx(RATES["unsubscribed"], rel=0.3)


def test_segments_come_from_declared_goals_and_tier_zero_is_undeclared():
    from envs.features import FEATURE_NAMES

    obs = np.zeros((3, len(FEATURE_NAMES)), dtype=np.float32)
    obs[0, FEATURE_NAMES.index("goal_saver_debt")] = 1
    obs[1, FEATURE_NAMES.index("goal_retirement")] = 1
    assert [SEGMENT_NAMES[i] for i in segments_of(obs)] == [
        "saver_debt",
        "retirement",
        "undeclared",
    ]
    counts = day_counts(
        segments_of(obs),
        np.array([True, True, False]),
        {
            "sent": np.array([True, False, False]),
            "clicked": np.array([True, False, False]),
            "visited": np.array([True, True, True]),
            "unsubscribed": np.array([True, False, True]),
            "complaint": np.zeros(3, bool),
            "anxious_click": np.zeros(3, bool),
            "churned": np.zeros(3, bool),
        },
    )
    assert counts[("saver_debt", "unsubscribed")] == (1.0, 1.0)  # per delivered message
    assert counts[("retirement", "unsubscribed")] == (0.0, 0.0)  # no message, no rate
    assert counts[("saver_debt", "visited")] == (0.0, 1.0)  # the visit was the message's click
    assert counts[("retirement", "visited")] == (1.0, 1.0)  # organic, per living client
    assert counts[("undeclared", "churned")] == (0.0, 0.0)  # gone: not counted


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"shift": 1.0}, "monitor.shift must be > 1"),
        ({"baseline_days": 0}, "monitor.baseline_days must be >= 1"),
        ({"false_alarms": 0}, "monitor.false_alarms must be > 0"),
        ({"guard_days": -1}, "monitor.guard_days must be >= 0"),
    ],
)
def test_bad_thresholds_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MonitorConfig(**kwargs)


def test_the_monitor_runs_over_a_logged_dataset():
    from agents.heuristics import HEURISTICS
    from envs.config import load_setup
    from evaluation.monitor import watch_logs
    from evaluation.record import log_policy

    frame = log_policy(HEURISTICS["segment_rules"](), load_setup(), 500, 20, seed=0, epsilon=0.2)
    monitor = watch_logs(frame, MonitorConfig(baseline_days=7))
    s = monitor.series[("retirement", "visit_rate", "up")]
    assert len(s.counts) == 20 and sum(s.trials) > 0
    assert monitor.alert_log().columns[:3] == ["day", "segment", "metric"]


@pytest.mark.slow
def test_the_monitor_over_a_misfiring_log_writes_the_serving_circuit(tmp_path, capsys):
    import datetime

    from agents.heuristics import HEURISTICS
    from envs.config import load_setup
    from evaluation.logs import write_logs
    from evaluation.record import log_policy
    from serve import circuit
    from tests.test_evaluate_modes import _run

    setup = load_setup(scenario="misfire")  # growth investors' campaigns misfire from day 29
    frame = log_policy(HEURISTICS["segment_rules"](), setup, 3000, 33, seed=0, epsilon=0.1)
    logs = write_logs(frame, tmp_path / "logs.parquet")
    state = tmp_path / "circuit.json"
    watch = ["mode=watch", f"watch.data={logs}", f"watch.circuit={state}"]
    assert _run(*watch, "watch.first_day=2026-10-26") == state
    tripped = circuit.read(state)
    assert "growth_investor" in tripped
    switched = (tripped["growth_investor"] - datetime.date(2026, 10, 26)).days
    assert 29 <= switched <= 31  # the day of the first alert, within two days of the start
    assert "growth_investor" in capsys.readouterr().out
    # undated, the same segments as a list
    assert _run(*watch) == state
    assert set(circuit.read(state)) == set(tripped)

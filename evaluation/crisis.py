"""Crisis studies: each policy with and without the circuit breaker, on the same clients and luck,
under a scenario and under ``calm``.

Arms: ``off`` runs the policy as it is, with the monitor watching only (its alerts are logged, so
the detection delay is known, but nothing switches); ``on`` lets the breaker switch alerted
segments to the safe fallback. Every (policy, seed) is also run under ``calm`` in both arms: the
``on`` arm's alerts there are false alerts, and the ``off`` arm is the counterfactual the crisis
is measured against (same clients, same luck, no crisis).

Metrics (``crisis/*``), over the clients the crisis touches (the event's segment by the world's
labels, every client when it names none) and the ``window_days`` from its start:

- ``detection_delay_days``: first alert in the touched declared segment or on every client
  together (any segment when the event names none) on or after the start, minus the start;
  censored at the horizon when none.
- ``false_alerts_per_100_days``: the ``on`` arm's alerts under ``calm`` per 100 days the monitor
  tested (days after its baseline window filled), over every segment and metric.
- ``clients_lost``: touched clients who churned in the window; ``excess_clients_lost``: minus
  those who churned in the ``calm`` counterfactual (the clients the crisis cost).
- ``anxious_clicks`` (and ``excess_anxious_clicks``) the same way.
- ``recovery_days``: days from the start to the end of the first 7-day window in which the touched
  clients' conversions per living client are back to ``1 - recovery_band`` of their rate over the
  monitor's baseline window before the start, staying so for 7 days (6 at the soonest: a crisis
  that never lowers conversions); censored at the horizon (the days left) when never.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from agents.base import Policy
from envs.config import Setup
from evaluation.breaker import BreakerConfig, CircuitBreaker
from evaluation.monitor import EVERYONE, MonitorConfig
from evaluation.rollout import rollout
from simulate.config import ConfigError, ScenarioConfig, num
from simulate.labels import SEGMENTS

ARMS = ("off", "on")
DAILY = ("sent", "anxious_click", "converted", "churned")
"""outcomes counted per day among the touched clients"""
METRICS = (
    "detection_delay_days",
    "false_alerts_per_100_days",
    "clients_lost",
    "excess_clients_lost",
    "anxious_clicks",
    "excess_anxious_clicks",
    "recovery_days",
    "switches",
)
RECOVERY_WEEK = 7


@dataclass
class CrisisConfig:
    """The monitor, the breaker and the crisis study (``crisis.*`` in the Hydra config)."""

    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    window_days: int = num(30, 1, 3650)
    """days from a crisis's start over which clients lost and anxious clicks are counted"""
    recovery_band: float = num(0.1, 0.0, 1.0)
    """conversions are recovered at ``1 - recovery_band`` of their rate before the crisis"""


@dataclass(frozen=True)
class Crisis:
    """When a scenario's crisis starts and whom it touches."""

    scenario: str
    start_day: int | None
    """first day of the earliest event (None: no event, e.g. ``calm``)"""
    end_day: int | None
    """last day of the latest event"""
    segment: str | None
    """the goal segment the events target (None: every client)"""


def crisis_of(scenario: ScenarioConfig) -> Crisis:
    """The crisis a scenario describes: its earliest event's start and the segment its events
    share (every client if they differ or name ``all``)."""
    if not scenario.events:
        return Crisis(scenario.name, None, None, None)
    segments = {ev.segment for ev in scenario.events}
    segment = segments.pop() if len(segments) == 1 else "all"
    return Crisis(
        scenario.name,
        min(ev.start_day for ev in scenario.events),
        max(ev.end_day for ev in scenario.events),
        None if segment == "all" else segment,
    )


@dataclass
class Trace:
    """One rollout of a policy in one arm: the daily record of the touched clients and the
    monitor's and breaker's logs."""

    policy: str
    arm: str
    scenario: str
    seed: int
    daily: dict[str, np.ndarray]
    """(days,) counts among the touched clients: :data:`DAILY` and ``alive`` (at the day's start)"""
    alerts: pl.DataFrame
    events: pl.DataFrame
    series: dict[tuple[str, str, str], tuple[np.ndarray, np.ndarray]]
    """the monitor's series: (segment, metric, direction) -> (daily events, daily units)"""
    tested_days: int
    """days the monitor tested (after its baseline window filled)"""


def run_trace(
    policy: Policy,
    arm: str,
    setup: Setup,
    crisis: Crisis,
    cfg: CrisisConfig,
    num_clients: int,
    horizon_days: int,
    seed: int,
) -> Trace:
    """Roll ``policy`` out in ``arm`` (``off``: watch only; ``on``: the breaker acts)."""
    breaker = CircuitBreaker(
        policy, monitor=cfg.monitor, cfg=cfg.breaker, act_on_alerts=arm == "on"
    )
    per_day: list[dict[str, np.ndarray]] = []

    def record(day, actions, outcomes, alive) -> None:
        today = {k: outcomes[k] & alive for k in DAILY}
        today["alive"] = alive.copy()
        per_day.append(today)

    result = rollout(breaker, setup, num_clients, horizon_days, seed, on_day=record)
    touched = (
        np.ones(num_clients, bool)
        if crisis.segment is None
        else result.segment == SEGMENTS.index(crisis.segment)
    )
    daily = {
        k: np.array([(d[k] & touched).sum() for d in per_day], dtype=float)
        for k in (*DAILY, "alive")
    }
    warmup = cfg.monitor.baseline_days + cfg.monitor.guard_days
    return Trace(
        policy.name,
        arm,
        "calm" if not setup.scenario.events else setup.scenario.name,
        seed,
        daily,
        breaker.monitor.alert_log(),
        breaker.event_log(),
        {
            key: (np.array(s.counts), np.array(s.trials))
            for key, s in breaker.monitor.series.items()
        },
        max(horizon_days - warmup, 0),
    )


def _window_sum(values: np.ndarray, start: int, days: int) -> float:
    return float(values[start : start + days].sum())


def recovery_days(trace: Trace, start: int, baseline_days: int, band: float) -> float:
    """Days from ``start`` to the end of the first 7-day window in which the touched clients'
    conversions per living client are back to at least ``1 - band`` of their rate over the
    ``baseline_days`` before ``start``, and stay so for the next 6 windows (the days left to the
    horizon if never)."""
    conv, alive = trace.daily["converted"], trace.daily["alive"]
    horizon = len(conv)
    before = slice(max(start - baseline_days, 0), start)
    base = conv[before].sum() / max(alive[before].sum(), 1.0)
    kernel = np.ones(RECOVERY_WEEK)
    rate = np.convolve(conv, kernel)[:horizon] / np.maximum(
        np.convolve(alive, kernel)[:horizon], 1.0
    )
    back = rate >= (1.0 - band) * base
    first = start + RECOVERY_WEEK - 1  # the first window wholly after the start
    for day in range(first, horizon - RECOVERY_WEEK + 1):
        if back[day : day + RECOVERY_WEEK].all():
            return float(day - start)
    return float(horizon - start)


def trace_metrics(trace: Trace, calm_off: Trace, crisis: Crisis, cfg: CrisisConfig) -> dict:
    """The ``crisis/*`` metrics of one trace but the false alerts, which come from the ``on``
    arm under calm (NaN where they do not apply)."""
    out = dict.fromkeys(METRICS, math.nan)
    out["switches"] = (
        float((trace.events["event"] == "switch").sum()) if trace.events.height else 0.0
    )
    if crisis.start_day is None:
        return out
    start, w = crisis.start_day, cfg.window_days
    alerts = trace.alerts.filter(pl.col("day") >= start)
    if crisis.segment is not None:  # an alert on every client together covers the segment too
        alerts = alerts.filter(pl.col("segment").is_in([crisis.segment, EVERYONE]))
    horizon = len(trace.daily["alive"])
    out["detection_delay_days"] = (
        float(alerts["day"].min() - start) if alerts.height else float(horizon - start)
    )
    for metric, outcome in (("clients_lost", "churned"), ("anxious_clicks", "anxious_click")):
        here = _window_sum(trace.daily[outcome], start, w)
        out[metric] = here
        out[f"excess_{metric}"] = here - _window_sum(calm_off.daily[outcome], start, w)
    out["recovery_days"] = recovery_days(trace, start, cfg.monitor.baseline_days, cfg.recovery_band)
    return out


@dataclass
class CrisisResult:
    """Every trace of a crisis study and its table."""

    crisis: Crisis
    traces: list[Trace]
    rows: pl.DataFrame
    """one row per (policy, arm, seed) with the :data:`METRICS`"""

    def table(self) -> pl.DataFrame:
        """Mean of each metric over seeds, per (policy, arm)."""
        return (
            self.rows.group_by(["policy", "monitor"], maintain_order=True)
            .agg([pl.col(m).mean() for m in METRICS] + [pl.len().alias("seeds")])
            .sort(["policy", "monitor"], maintain_order=True)
        )

    def cut(self, policy: str, metric: str) -> float:
        """1 - (``on`` arm / ``off`` arm) of a metric summed over seeds."""
        sums = {
            arm: self.rows.filter((pl.col("policy") == policy) & (pl.col("monitor") == arm))[
                metric
            ].sum()
            for arm in ARMS
        }
        return 1.0 - sums["on"] / sums["off"] if sums["off"] else math.nan

    def summary(self, policy: str) -> str:
        """One line on what the breaker did for ``policy``'s touched clients (clients lost,
        anxious clicks; summed over seeds): "segment_rules: the breaker cut clients lost by 41%
        and cut anxious clicks by 12%". A count that is zero in the ``off`` arm has no
        percentage: "no anxious clicks in either arm", or the ``on`` arm's count against none."""
        cuts, plain = [], []
        for metric, noun in (
            ("clients_lost", "clients lost"),
            ("anxious_clicks", "anxious clicks"),
        ):
            on, off = (
                float(
                    self.rows.filter((pl.col("policy") == policy) & (pl.col("monitor") == arm))[
                        metric
                    ].sum()
                )
                for arm in ("on", "off")
            )
            if off > 0:
                cut = 1.0 - on / off
                cuts.append(f"{'cut' if cut >= 0 else 'raised'} {noun} by {abs(cut):.0%}")
            elif on > 0:
                plain.append(f"{on:.0f} {noun} with the breaker, none without it")
            else:
                plain.append(f"no {noun} in either arm")
        said = [f"the breaker {' and '.join(cuts)}"] if cuts else []
        return f"{policy}: " + "; ".join(said + plain)

    def logs(self) -> pl.DataFrame:
        """Every alert and every switch and return of every trace, one row each, with the
        policy, arm, world and seed."""
        frames = []
        for t in self.traces:
            tag = [
                pl.lit(t.policy).alias("policy"),
                pl.lit(t.arm).alias("monitor"),
                pl.lit(t.scenario).alias("world"),
                pl.lit(t.seed).alias("seed"),
            ]
            alerts = t.alerts.select(
                "day",
                "segment",
                pl.lit("alert").alias("event"),
                (
                    pl.col("metric")
                    + " "
                    + pl.col("direction")
                    + ": "
                    + pl.col("observed").round(5).cast(pl.Utf8)
                    + " vs baseline "
                    + pl.col("baseline").round(5).cast(pl.Utf8)
                ).alias("reason"),
            )
            frames.append(pl.concat([alerts, t.events]).with_columns(tag))
        return pl.concat(frames).sort(["policy", "monitor", "world", "seed", "day"])

    def markdown(self) -> str:
        """The table as Markdown (means over seeds)."""
        t = self.table()
        head = ["policy", "monitor", *METRICS]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for row in t.iter_rows(named=True):
            cells = [row["policy"], row["monitor"]]
            cells += ["—" if math.isnan(row[m]) else f"{row[m]:.3g}" for m in METRICS]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def crisis_study(
    policies: Sequence[Policy],
    setup: Setup,
    cfg: CrisisConfig | None = None,
    num_clients: int = 2000,
    horizon_days: int = 90,
    seeds: Sequence[int] = (1000, 1001, 1002),
    progress: bool = True,
) -> CrisisResult:
    """Each policy in both arms under ``setup``'s scenario and under ``calm``, same clients and
    seeds; returns the traces and the per-seed metrics."""
    cfg = cfg or CrisisConfig()
    crisis = crisis_of(setup.scenario)
    warmup = cfg.monitor.baseline_days + cfg.monitor.guard_days
    if crisis.start_day is not None and crisis.start_day < warmup:
        raise ConfigError(
            f"scenario {crisis.scenario!r} starts on day {crisis.start_day}, before the monitor's "
            f"baseline fills (day {warmup} = crisis.monitor.baseline_days + guard_days): "
            "shorten the baseline or start the crisis later"
        )
    if crisis.start_day is not None and horizon_days < crisis.start_day + cfg.window_days:
        raise ConfigError(
            f"eval.horizon_days={horizon_days} ends before the crisis window does (day "
            f"{crisis.start_day} + crisis.window_days {cfg.window_days}): raise eval.horizon_days"
        )
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique, got {names}")
    calm_setup = Setup(setup.env, setup.population, ScenarioConfig(), setup.reward, setup.seed)
    worlds = [("calm", calm_setup)] + ([] if crisis.start_day is None else [("crisis", setup)])
    jobs = [(s, p, arm, w) for s in seeds for p in policies for w in worlds for arm in ARMS]
    traces: dict[tuple, Trace] = {}
    with tqdm(jobs, desc="crisis study", unit="rollout", disable=None if progress else True) as bar:
        for seed, policy, arm, (world, world_setup) in bar:
            bar.set_postfix_str(f"{policy.name} {world} monitor={arm} seed {seed}")
            traces[(seed, policy.name, world, arm)] = run_trace(
                policy, arm, world_setup, crisis, cfg, num_clients, horizon_days, seed
            )
    rows = []
    for seed in seeds:
        for name in names:
            calm_off, calm_on = (traces[(seed, name, "calm", arm)] for arm in ARMS)
            false_alerts = 100.0 * calm_on.alerts.height / max(calm_on.tested_days, 1)
            for arm in ARMS:
                m = trace_metrics(traces[(seed, name, worlds[-1][0], arm)], calm_off, crisis, cfg)
                if arm == "on":
                    m["false_alerts_per_100_days"] = false_alerts
                rows.append({"policy": name, "monitor": arm, "seed": seed, **m})
    return CrisisResult(crisis, list(traces.values()), pl.DataFrame(rows))


def timeline_series(result: CrisisResult, policy: str) -> dict:
    """What the timeline plot draws for ``policy`` on the study's first seed: the series that
    alerted first in the touched segment (the ``on`` arm's, else the ``off`` arm's; visits when
    none did), its daily rate in both arms, the touched clients lost so far in both arms and
    under calm, the breaker's switches and returns there, the alert and the recovery day."""
    crisis = result.crisis
    seed = result.rows["seed"][0]
    world = crisis.scenario
    pick = {(t.arm, t.scenario): t for t in result.traces if t.policy == policy and t.seed == seed}
    arms = {arm: pick[(arm, world)] for arm in ARMS}
    calm = pick[("off", "calm")]
    where = [crisis.segment, EVERYONE] if crisis.segment is not None else None
    start = crisis.start_day or 0

    def first_alert(trace: Trace):
        alerts = trace.alerts.filter(pl.col("day") >= start)
        if where is not None:
            alerts = alerts.filter(pl.col("segment").is_in(where))
        return alerts.row(0, named=True) if alerts.height else None

    alert = first_alert(arms["on"]) or first_alert(arms["off"])
    key = (
        (alert["segment"], alert["metric"], alert["direction"])
        if alert
        else (crisis.segment or EVERYONE, "visit_rate", "up")
    )
    rate = {}
    for arm, trace in arms.items():
        counts, trials = trace.series[key]
        with np.errstate(invalid="ignore", divide="ignore"):
            rate[arm] = np.where(trials > 0, counts / np.maximum(trials, 1), np.nan)
    events = arms["on"].events
    if where is not None:
        events = events.filter(pl.col("segment").is_in(where))
    row = result.rows.filter(
        (pl.col("policy") == policy) & (pl.col("monitor") == "on") & (pl.col("seed") == seed)
    ).row(0, named=True)
    horizon = len(calm.daily["alive"])
    recovery = row["recovery_days"]
    return {
        "metric": f"{key[1]} {key[2]}",
        "segment": key[0],
        "touched": crisis.segment or "every client",
        "rate": rate,
        "lost": {
            "off": np.cumsum(arms["off"].daily["churned"]),
            "on": np.cumsum(arms["on"].daily["churned"]),
            "calm": np.cumsum(calm.daily["churned"]),
        },
        "events": list(zip(events["day"].to_list(), events["event"].to_list(), strict=True)),
        "alert": None if alert is None else alert["day"],
        "recovery": (
            None
            if crisis.start_day is None or math.isnan(recovery) or start + recovery >= horizon
            else start + recovery
        ),
    }

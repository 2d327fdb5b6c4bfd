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

A study too small to find its crisis says so (:meth:`CrisisResult.support`): the events the
crisis added to (or removed from) each watched series of the touched clients, against the same
clients under ``calm``, as a z-score with the monitor's noise; under ``sqrt(2h)`` (h: the monitor's
threshold) no alert can come, and the summary names the clients the study would need. A cut in
percent needs at least :data:`MIN_COUNT` events without the breaker.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from agents.base import Policy
from envs.config import Setup, eval_seeds
from evaluation.breaker import BreakerConfig, CircuitBreaker
from evaluation.monitor import EVERYONE, MAX_DISPERSION, MIN_EXPECTED, Monitor, MonitorConfig
from evaluation.rollout import Progress, rollout
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
MIN_COUNT = 10
"""fewest events (clients lost, anxious clicks; summed over seeds) in the arm without the breaker
for the summary to give the breaker's cut in percent: below it one event more or less moves the
percentage by more than 10 points"""


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


def crisis_signal(
    calm: np.ndarray,
    crisis: np.ndarray,
    direction: str,
    baseline_days: int,
    longest: int,
) -> float:
    """How plainly a crisis shows in one watched series: the largest z-score, over the first
    1..``longest`` days of the crisis, of the events it added (``up``; removed: ``down``) to what
    the same clients did under ``calm`` with the same luck (``calm`` and ``crisis``: the daily
    counts from the crisis's start). The noise is the monitor's: a Poisson count over ``k`` days
    (at least 1 event) times the series' day-to-day dispersion under calm (where it expects
    :data:`evaluation.monitor.MIN_EXPECTED` events a day), plus its baseline's own, estimated over
    ``baseline_days``. For a test of a shift in a mean, the likelihood ratio at the threshold
    ``h`` is ``z²/2``: a series whose z stays under ``sqrt(2h)`` cannot raise an alert."""
    days = np.arange(1, longest + 1)
    calm, crisis = calm[:longest], crisis[:longest]
    added = np.cumsum(crisis - calm) * (1.0 if direction == "up" else -1.0)
    noise = np.maximum(np.cumsum(calm), 1.0) * _dispersion(calm) * (1.0 + days / baseline_days)
    return float(max(np.max(added / np.sqrt(noise)), 0.0))


def _dispersion(daily: np.ndarray) -> float:
    """Pearson χ² per degree of freedom of daily counts around their weekday's mean, floored at
    1 and capped at the monitor's :data:`evaluation.monitor.MAX_DISPERSION`; 1 for a series with
    fewer than :data:`evaluation.monitor.MIN_EXPECTED` events a day or under two weeks of days."""
    if daily.size < 14 or daily.mean() < MIN_EXPECTED:
        return 1.0
    weekday = np.arange(daily.size) % 7
    means = np.array([daily[weekday == w].mean() for w in range(7)])[weekday]
    chi2 = float(np.sum((daily - means) ** 2 / np.maximum(means, 1e-12)))
    return min(max(chi2 / (daily.size - 7), 1.0), MAX_DISPERSION)


@dataclass(frozen=True)
class Support:
    """How large a crisis study is next to what its monitor needs to find the crisis."""

    segment: str
    """the touched segment's series (``all``: every client)"""
    touched: float
    """touched clients alive on the crisis's first day (mean over seeds)"""
    series: str
    """the watched series (metric and direction) in which the crisis shows most plainly"""
    signal: float
    """its :func:`crisis_signal` z-score (mean over seeds)"""
    needed: float
    """the z-score the monitor's threshold h asks for: ``sqrt(2h)``"""
    needed_clients: int | None
    """clients per seed (rounded up to 100) at which the signal would reach ``needed``, as z grows
    with the square root of the clients; None where the crisis changed nothing to scale"""

    @property
    def enough(self) -> bool:
        """The signal reaches what the monitor needs: the study can find the crisis at all."""
        return self.signal >= self.needed


@dataclass
class CrisisResult:
    """Every trace of a crisis study and its table."""

    crisis: Crisis
    traces: list[Trace]
    rows: pl.DataFrame
    """one row per (policy, arm, seed) with the :data:`METRICS`"""
    cfg: CrisisConfig = field(default_factory=CrisisConfig)
    """the monitor, breaker and window the study ran with"""
    num_clients: int = 0
    """clients per seed (touched or not)"""

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
        and cut anxious clicks by 12%". A count under :data:`MIN_COUNT` in the ``off`` arm has no
        percentage: both counts are given, "no anxious clicks in either arm" when both are zero.
        A breaker that never switched ran alike in both arms and is said to. For a study with
        its traces, whether the crisis was found and, when the study is too small to find it
        (:meth:`support`), the clients it would need."""
        cuts, plain = [], []
        mine = self.rows.filter(pl.col("policy") == policy)
        switched = (  # a table without switches (counts alone) is taken to have switched
            "switches" not in mine.columns
            or float(mine.filter(pl.col("monitor") == "on")["switches"].sum()) > 0
        )
        for metric, noun in (
            ("clients_lost", "clients lost"),
            ("anxious_clicks", "anxious clicks"),
        ):
            on, off = (
                float(mine.filter(pl.col("monitor") == arm)[metric].sum()) for arm in ("on", "off")
            )
            if off == 0 and on == 0:
                plain.append(f"no {noun} in either arm")
            elif not switched:
                plain.append(f"{off:.0f} {noun}")
            elif off >= MIN_COUNT:
                cut = 1.0 - on / off
                cuts.append(f"{'cut' if cut >= 0 else 'raised'} {noun} by {abs(cut):.0%}")
            elif off > 0:
                plain.append(
                    f"{on:.0f} {noun} with the breaker and {off:.0f} without it "
                    f"(too few for a percentage: {MIN_COUNT} needed)"
                )
            else:
                plain.append(f"{on:.0f} {noun} with the breaker, none without it")
        said = [f"the breaker {' and '.join(cuts)}"] if cuts else []
        if not switched:
            said = ["the breaker never switched, so both arms ran alike"]
        return f"{policy}: " + "; ".join(said + plain + self._detection(policy))

    def _detection(self, policy: str) -> list[str]:
        """What the summary says of finding the crisis: in how many seeds it was never found,
        and the study's size when it is too small (nothing without traces or a crisis)."""
        if self.crisis.start_day is None or not self.traces:
            return []
        off = self.rows.filter((pl.col("policy") == policy) & (pl.col("monitor") == "off"))
        horizon = len(self.traces[0].daily["alive"])
        missed = int((off["detection_delay_days"] >= horizon - self.crisis.start_day).sum())
        said = []
        if missed:
            seeds = off.height
            said.append(
                f"the crisis was never found in {missed} of {seeds} seed{'s' * (seeds > 1)} "
                "(its detection delay is the days left to the horizon)"
            )
        found = self.support(policy)
        if not found.enough:
            need = (
                f"at least {found.needed_clients:,} clients would be needed"
                if found.needed_clients
                else "the crisis changed none of their watched counts"
            )
            said.append(
                f"the study is too small to find it: among its {found.touched:,.0f} touched "
                f"clients ({found.segment}, of {self.num_clients:,}) the crisis shows at most "
                f"z = {found.signal:.1f} ({found.series}) where the monitor needs "
                f"{found.needed:.1f}; {need}"
            )
        return said

    def support(self, policy: str) -> Support:
        """Whether the study is large enough for the monitor to find the crisis among
        ``policy``'s touched clients: the :func:`crisis_signal` of each watched series of the
        touched segment, without the breaker, the crisis against ``calm`` (same clients, same
        luck), over the window (visits: over the week and guard days their baseline takes to
        follow a change); the mean over seeds of the plainest series."""
        start = self.crisis.start_day
        if start is None:
            raise ValueError(f"scenario {self.crisis.scenario!r} has no crisis to find")
        segment = self.crisis.segment or EVERYONE
        off = {
            (t.scenario == "calm", t.seed): t
            for t in self.traces
            if t.policy == policy and t.arm == "off"
        }
        seeds = sorted({seed for calm, seed in off if calm})
        if not seeds:
            raise ValueError(f"no calm trace of {policy!r} in this study")
        monitor = self.cfg.monitor
        signals, plainest = [], []
        for seed in seeds:
            calm, crisis = off[(True, seed)], off[(False, seed)]
            here = {}
            for key in calm.series:
                if key[0] != segment:
                    continue
                seasonal = key[1] == "visit_rate"  # baseline: last week's level
                here[key] = crisis_signal(
                    calm.series[key][0][start:],
                    crisis.series[key][0][start:],
                    key[2],
                    RECOVERY_WEEK if seasonal else monitor.baseline_days,
                    RECOVERY_WEEK + monitor.guard_days if seasonal else self.cfg.window_days,
                )
            top = max(here, key=here.__getitem__)
            signals.append(here[top])
            plainest.append(f"{top[1]} {top[2]}")
        signal = float(np.mean(signals))
        needed = math.sqrt(2.0 * Monitor(monitor).threshold)
        clients = (
            math.ceil(self.num_clients * (needed / signal) ** 2 / 100) * 100
            if signal > 0 and self.num_clients
            else None
        )
        touched = float(np.mean([off[(True, s)].daily["alive"][start] for s in seeds]))
        series = max(set(plainest), key=plainest.count)
        return Support(segment, touched, series, signal, needed, clients)

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
    seeds: Sequence[int] = tuple(eval_seeds(3)),
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
    with Progress(len(jobs), "crisis study", "rollout", progress) as bar:
        for seed, policy, arm, (world, world_setup) in jobs:
            bar.set_note(f"{policy.name} {world} monitor={arm} seed {seed}")
            traces[(seed, policy.name, world, arm)] = run_trace(
                policy, arm, world_setup, crisis, cfg, num_clients, horizon_days, seed
            )
            bar.update()
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
    return CrisisResult(crisis, list(traces.values()), pl.DataFrame(rows), cfg, num_clients)


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

"""A crisis monitor over the daily outcome stream of a running policy: what a firm sees, never
latent state.

Series: for each declared segment (the goal a client declared at onboarding, seen at consent
tier >= 1; tier-0 clients form the segment ``undeclared``) and each watched metric, the day's
count of events and of the units they are a rate of. Metrics and the direction that raises an
alert: opt-outs (``unsubscribed``), ``complaint`` and ``anxious_click`` per delivered message,
``churned`` per living client, all going up; organic visits (a visit that was not a message's
click) per living client, going up or down (two series). Per message, so a policy's own weekly
rhythm of sends does not read as a change; visits keep a weekly rhythm of their own (weekends),
so their baseline is the same weekday's.

Test: a one-sided binomial CUSUM per series. Each day, the count ``x`` among ``n`` clients adds
the log-likelihood ratio of a rate ``shift`` times the baseline against the baseline,
``x·log(p1/p0) + (n − x)·log((1 − p1)/(1 − p0))``; the statistic is the running sum floored at 0,
and an alert is raised when it exceeds ``h``. Under no change the statistic's exponential is a
nonnegative supermartingale, so a series crosses ``h`` on a given day with probability at most
``exp(−h)``; with ``M`` series watched for ``D`` days, ``h = log(M·D / false_alarms)`` keeps the
expected number of false alerts across all of them under ``false_alarms`` (a Bonferroni-style
correction for the number of segments × metrics). A change to rate ``p1`` is detected after about
``h / KL(p1 ‖ p0)`` trials, i.e. ``h / (n · KL)`` days.

Baseline: each series' rate over the ``baseline_days`` that end ``guard_days`` before today (the
guard keeps a change out of its own baseline for a few days; for visits, only the days of
today's weekday in that window); frozen while the series is in alert, so "back to baseline" means
back to what it was before. Until a series has ``baseline_days`` of history it is not tested.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import polars as pl

from envs.features import FEATURE_NAMES
from simulate.labels import SEGMENTS

SEGMENT_NAMES: tuple[str, ...] = (*SEGMENTS, "undeclared")
METRICS: tuple[tuple[str, str, str], ...] = (
    ("unsubscribe_rate", "unsubscribed", "up"),
    ("complaint_rate", "complaint", "up"),
    ("anxious_click_rate", "anxious_click", "up"),
    ("churn_rate", "churned", "up"),
    ("visit_rate", "visited", "up"),
    ("visit_rate", "visited", "down"),
)
"""(metric, outcome counted, direction of the alert)"""
PER_MESSAGE = ("unsubscribed", "complaint", "anxious_click")
"""outcomes counted per delivered message (the others per living client)"""
SEASONAL = ("visited",)
"""outcomes whose baseline is the same weekday's"""
_GOAL_COLUMNS = [FEATURE_NAMES.index(f"goal_{s}") for s in SEGMENTS]


@dataclass(frozen=True)
class MonitorConfig:
    """Thresholds of the crisis monitor (``monitor.*`` in the Hydra config)."""

    baseline_days: int = 21
    """days of history that set a series' baseline rate (visits: the 3 same weekdays in them)"""
    guard_days: int = 2
    """days between the baseline window and today"""
    shift: float = 2.0
    """the rate ratio the test is tuned to (1/shift for a fall)"""
    false_alarms: float = 0.5
    """expected false alerts over ``horizon_days`` across every series, at most"""
    horizon_days: int = 100
    """the horizon the false-alarm budget is spread over"""
    min_rate: float = 1e-5
    """floor of a baseline rate (a metric never seen still has a baseline)"""

    def __post_init__(self) -> None:
        for name in ("baseline_days", "horizon_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"monitor.{name} must be >= 1, got {getattr(self, name)}")
        if self.guard_days < 0:
            raise ValueError(f"monitor.guard_days must be >= 0, got {self.guard_days}")
        if not self.shift > 1.0:
            raise ValueError(f"monitor.shift must be > 1, got {self.shift}")
        if not self.false_alarms > 0:
            raise ValueError(f"monitor.false_alarms must be > 0, got {self.false_alarms}")
        if not 0 < self.min_rate < 1:
            raise ValueError(f"monitor.min_rate must lie in (0, 1), got {self.min_rate}")

    def threshold(self, series: int) -> float:
        """The CUSUM threshold h for ``series`` series: log(series · horizon / false_alarms)."""
        return math.log(series * self.horizon_days / self.false_alarms)


@dataclass(frozen=True)
class Alert:
    """One alert: the day, the series, the baseline and observed rates, and the statistic."""

    day: int
    segment: str
    metric: str
    direction: str
    baseline: float
    observed: float
    """the day's rate in the segment"""
    statistic: float
    threshold: float

    @property
    def jump(self) -> float:
        """observed / baseline"""
        return self.observed / self.baseline


def segments_of(obs: np.ndarray) -> np.ndarray:
    """(N,) each client's declared segment index into :data:`SEGMENT_NAMES` (undeclared: the
    last), from the observation's goal one-hot (zero when the tier hides it)."""
    goals = np.asarray(obs)[:, _GOAL_COLUMNS]
    return np.where(goals.max(axis=1) > 0, goals.argmax(axis=1), len(SEGMENTS))


@dataclass
class _Series:
    name: str
    outcome: str
    direction: str
    counts: list[float] = field(default_factory=list)
    trials: list[float] = field(default_factory=list)
    statistic: float = 0.0
    frozen: float | None = None
    """the baseline held while in alert"""


class Monitor:
    """Watches every (segment, metric) series day by day; :meth:`update` returns the day's alerts.

    Args:
        cfg: thresholds.
        segments: the segment names (default: the four declared goals and ``undeclared``).
    """

    def __init__(self, cfg: MonitorConfig | None = None, segments=SEGMENT_NAMES) -> None:
        self.cfg = cfg or MonitorConfig()
        self.segments = tuple(segments)
        self.series = {
            (seg, name, direction): _Series(name, outcome, direction)
            for seg in self.segments
            for name, outcome, direction in METRICS
        }
        self.threshold = self.cfg.threshold(len(self.series))
        self.alerts: list[Alert] = []
        self.in_alert: set[tuple[str, str, str]] = set()

    def baseline(self, key: tuple[str, str, str]) -> float | None:
        """The series' baseline rate today (None until it has enough history)."""
        s = self.series[key]
        if s.frozen is not None:
            return s.frozen
        today = len(s.counts)
        end = today - self.cfg.guard_days
        start = end - self.cfg.baseline_days
        if start < 0:
            return None
        days = range(start, end)
        if s.outcome in SEASONAL:
            days = [d for d in days if (today - d) % 7 == 0]
        n = sum(s.trials[d] for d in days)
        if n <= 0:
            return None
        return min(max(sum(s.counts[d] for d in days) / n, self.cfg.min_rate), 0.5)

    def update(
        self, day: int, counts: Mapping[tuple[str, str], tuple[float, float]]
    ) -> list[Alert]:
        """Add a day: ``counts[(segment, outcome)] = (events, living clients)``; returns the
        alerts raised today (a series in alert raises no new one until it has returned)."""
        today = []
        for key, s in self.series.items():
            seg = key[0]
            x, n = counts.get((seg, s.outcome), (0.0, 0.0))
            p0 = self.baseline(key)
            s.counts.append(float(x))
            s.trials.append(float(n))
            if p0 is None or n <= 0:
                continue
            p1 = p0 * self.cfg.shift if s.direction == "up" else p0 / self.cfg.shift
            p1 = min(p1, 0.999)
            llr = x * math.log(p1 / p0) + (n - x) * math.log((1 - p1) / (1 - p0))
            s.statistic = max(0.0, s.statistic + llr)
            if s.statistic > self.threshold and key not in self.in_alert:
                alert = Alert(day, seg, s.name, s.direction, p0, x / n, s.statistic, self.threshold)
                today.append(alert)
                self.in_alert.add(key)
                s.frozen = p0
        self.alerts.extend(today)
        return today

    def release(self, key: tuple[str, str, str]) -> None:
        """End a series' alert (the breaker decides when): its statistic restarts from 0 and its
        baseline thaws."""
        self.in_alert.discard(key)
        s = self.series[key]
        s.statistic, s.frozen = 0.0, None

    def alert_log(self) -> pl.DataFrame:
        """Every alert so far, one row each."""
        columns = ("day", "segment", "metric", "direction", "baseline", "observed", "jump")
        rows = [
            {k: getattr(a, k) for k in columns}
            | {"statistic": a.statistic, "threshold": a.threshold}
            for a in self.alerts
        ]
        schema = {
            "day": pl.Int64,
            "segment": pl.Utf8,
            "metric": pl.Utf8,
            "direction": pl.Utf8,
            "baseline": pl.Float64,
            "observed": pl.Float64,
            "jump": pl.Float64,
            "statistic": pl.Float64,
            "threshold": pl.Float64,
        }
        return pl.DataFrame(rows, schema=schema)


def day_counts(
    segment: np.ndarray, alive: np.ndarray, outcomes: Mapping[str, np.ndarray]
) -> dict[tuple[str, str], tuple[float, float]]:
    """One day's (events, units) per (segment, outcome) among living clients: per delivered
    message for opt-outs, complaints and anxious clicks; per living client for churn and organic
    visits (a visit that was not a message's click)."""
    out = {}
    sent = np.asarray(outcomes["sent"], dtype=bool)
    clicked = np.asarray(outcomes.get("clicked", np.zeros_like(sent)), dtype=bool)
    for i, seg in enumerate(SEGMENT_NAMES):
        who = alive & (segment == i)
        for _, outcome, _ in METRICS:
            events = np.asarray(outcomes[outcome], dtype=bool) & who
            if outcome in PER_MESSAGE:
                out[(seg, outcome)] = (float((events & sent).sum()), float((who & sent).sum()))
            elif outcome == "visited":
                out[(seg, outcome)] = (float((events & ~clicked).sum()), float(who.sum()))
            else:
                out[(seg, outcome)] = (float(events.sum()), float(who.sum()))
    return out


def watch_logs(frame: pl.DataFrame, cfg: MonitorConfig | None = None) -> Monitor:
    """Run the monitor over a logged dataset (docs/logged-data.md), day by day."""
    monitor = Monitor(cfg)
    for (day,), rows in frame.sort("day").group_by(["day"], maintain_order=True):
        obs = rows.select(FEATURE_NAMES).to_numpy()
        outcomes = {o: rows[o].to_numpy() for _, o, _ in METRICS} | {
            "sent": rows["sent"].to_numpy()
        }
        monitor.update(int(day), day_counts(segments_of(obs), np.ones(rows.height, bool), outcomes))
    return monitor

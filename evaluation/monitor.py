"""A crisis monitor over the daily outcome stream of a running policy: what a firm sees, never
latent state.

Series: for each declared segment (the goal a client declared at onboarding, seen at consent
tier >= 1; tier-0 clients form the segment ``undeclared``), for every client together (``all``:
a change that touches everyone shows there first), and for each watched metric, the day's count
of events and of the units they are a rate of. Metrics and the direction that raises an alert:
opt-outs (``unsubscribed``), ``complaint`` and ``anxious_click`` per delivered message, and
``churned`` per living client, all going up; clicks per delivered message going down (a message
that misfires stops being clicked); organic visits (a visit that was not a message's click) per
living client, going up or down (two series). Per message, so a policy's own weekly rhythm of
sends does not read as a change.

Test: one-sided binomial CUSUMs per series. Each day, the count ``x`` among ``n`` units adds to
each statistic the log-likelihood ratio of a rate ``shift`` times the baseline against the
baseline, ``x·log(p1/p0) + (n − x)·log((1 − p1)/(1 − p0))``; a statistic is the running sum
floored at 0, and an alert is raised when one exceeds ``h``. Rates get two CUSUMs (``shift`` for
a doubling, ``large_shift`` for an abrupt many-fold jump of a rare event), visits one
(``visit_shift``). Under no change a statistic's exponential is a nonnegative supermartingale,
so it crosses ``h`` on a given day with probability at most ``exp(−h)``; with ``M`` statistics
watched for ``D`` days, ``h = log(M·D / false_alarms)`` keeps the expected number of false alerts
across all of them under ``false_alarms`` (a Bonferroni-style correction for the number of
segments × metrics × shifts). A change to rate ``p1`` is detected after about ``h / KL(p1 ‖ p0)``
trials, i.e. ``h / (n · KL)`` days. The ``all`` series counts every client but those of segments
on a fallback or in alert on the same metric (an alert there is news about the others), and its
statistics restart when a segment's alert names the change they were gathering.

Baseline: each series' rate over the ``baseline_days`` that end ``guard_days`` before today (the
guard keeps a change out of its own baseline for a few days); for visits, the level of the
window's last 7 days times today's weekday's share of the whole window (visits drift as trust
grows, and a level three weeks old would read the drift as a change); frozen while the series is
in alert (and for a baseline window after it returns), so "back to baseline" means back to what
it was before. Days a segment spends on a fallback are kept out of its baselines (what it was
sent was not the policy's). Until a series has ``baseline_days`` of history it is not tested.

Dispersion: where a series expects several events a day, its baseline days' Pearson χ² per
degree of freedom against a binomial (floored at 1) divides each day's log-likelihood ratio: a
quasi-likelihood CUSUM. Visits swing together from day to day more than independent clients
would, and a binomial test would read each swing as evidence.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from envs.features import FEATURE_NAMES
from serve import circuit
from simulate.config import num
from simulate.labels import SEGMENTS

SEGMENT_NAMES: tuple[str, ...] = circuit.SEGMENTS
"""the declared segments and ``undeclared``, as the serving circuit file names them"""
if SEGMENT_NAMES[:-1] != SEGMENTS:
    raise ImportError(
        f"serve.circuit.SEGMENTS {SEGMENT_NAMES} must be simulate.labels.SEGMENTS {SEGMENTS} "
        "then 'undeclared': the monitor's segments are the circuit file's"
    )
EVERYONE = circuit.EVERYONE
"""the series over every client: a change that touches everyone (a market shock) shows there
first, where the counts are largest"""
WATCHED: tuple[str, ...] = (*SEGMENT_NAMES, EVERYONE)
METRICS: tuple[tuple[str, str, str], ...] = (
    ("unsubscribe_rate", "unsubscribed", "up"),
    ("complaint_rate", "complaint", "up"),
    ("anxious_click_rate", "anxious_click", "up"),
    ("click_rate", "clicked", "down"),
    ("churn_rate", "churned", "up"),
    ("visit_rate", "visited", "up"),
    ("visit_rate", "visited", "down"),
)
"""(metric, outcome counted, direction of the alert)"""
PER_MESSAGE = ("unsubscribed", "complaint", "anxious_click", "clicked")
"""outcomes counted per delivered message (the others per living client)"""
SEASONAL = ("visited",)
"""outcomes whose baseline is last week's level times today's weekday's share"""
_GOAL_COLUMNS = [FEATURE_NAMES.index(f"goal_{s}") for s in SEGMENTS]


@dataclass
class MonitorConfig:
    """Thresholds of the crisis monitor (``crisis.monitor.*`` in the Hydra config)."""

    baseline_days: int = num(21, 1, 3650)
    """days of history that set a series' baseline rate (visits: each weekday's share of them)"""
    guard_days: int = num(2, 0, 365)
    """days between the baseline window and today"""
    shift: float = num(2.0, 1.01, 1000.0)
    """the rate ratio the test of each rate per message and of churn is tuned to (1/shift for a
    fall)"""
    large_shift: float = num(8.0, 1.01, 1e6)
    """a second CUSUM per rate (not visits) tuned to an abrupt jump: rare events (a handful of
    anxious clicks or complaints a day) that jump many-fold are seen in a day or two, where the
    ``shift`` test needs a week; both share the false-alarm budget"""
    visit_shift: float = num(1.3, 1.01, 1000.0)
    """the same for organic visits: a common event (several in a hundred clients a day), so a
    smaller change is worth an alert and is seen within days (a market shock raises visits by a
    quarter to a half; measured in the README's crisis study, 1.25 to 1.5 all keep calm free of
    false alerts and 1.5 finds the shock days later)"""
    false_alarms: float = num(0.5, 1e-9, 1000.0)
    """expected false alerts over ``horizon_days`` across every series, at most"""
    horizon_days: int = num(100, 1, 100_000)
    """the horizon the false-alarm budget is spread over"""
    min_rate: float = num(1e-5, 1e-12, 0.5)
    """floor of a baseline rate (a metric never seen still has a baseline)"""

    def __post_init__(self) -> None:
        for name in ("baseline_days", "horizon_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"crisis.monitor.{name} must be >= 1, got {getattr(self, name)}")
        if self.guard_days < 0:
            raise ValueError(f"crisis.monitor.guard_days must be >= 0, got {self.guard_days}")
        for name in ("shift", "large_shift", "visit_shift"):
            if not getattr(self, name) > 1.0:
                raise ValueError(f"crisis.monitor.{name} must be > 1, got {getattr(self, name)}")
        if not self.false_alarms > 0:
            raise ValueError(f"crisis.monitor.false_alarms must be > 0, got {self.false_alarms}")
        if not 0 < self.min_rate < 1:
            raise ValueError(f"crisis.monitor.min_rate must lie in (0, 1), got {self.min_rate}")

    def threshold(self, statistics: int) -> float:
        """The CUSUM threshold h for ``statistics`` CUSUMs watched together:
        log(statistics · horizon / false_alarms)."""
        return math.log(statistics * self.horizon_days / self.false_alarms)


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
    shifts: tuple[float, ...]
    """the rate ratios its CUSUMs are tuned to (1/shift for a fall), one statistic each"""
    counts: list[float] = field(default_factory=list)
    trials: list[float] = field(default_factory=list)
    statistics: list[float] = field(default_factory=list)
    paused: list[bool] = field(default_factory=list)
    """per day: the segment was on a fallback (the day is kept out of baselines)"""
    frozen: tuple[float, float, float] | None = None
    """the baseline (rate, dispersion, relative variance) held while in alert and for a baseline
    window after it returns"""
    thaw_day: int | None = None
    """the day a returned series' baseline window is clear of its alert again (None: in alert)"""

    def __post_init__(self) -> None:
        self.statistics = [0.0] * len(self.shifts)

    @property
    def statistic(self) -> float:
        """the largest of its CUSUM statistics"""
        return max(self.statistics)


MIN_EXPECTED = 5.0
"""a series' dispersion is estimated only where it expects this many events a day on average"""
MAX_DISPERSION = 10.0


def _dispersion(s: _Series, days: Sequence[int]) -> float:
    """Pearson χ² / degrees of freedom of the baseline days' counts against a binomial (the rate
    of each day's weekday for visits, one rate otherwise), floored at 1: how much more the series
    varies from day to day than independent clients would. 1 where events are too few a day."""
    seasonal = s.outcome in SEASONAL
    groups: dict[int, list[int]] = {}
    for d in days:
        groups.setdefault(d % 7 if seasonal else 0, []).append(d)
    chi2 = expected = 0.0
    dof = 0
    for group in groups.values():
        n = sum(s.trials[d] for d in group)
        x = sum(s.counts[d] for d in group)
        if n <= 0 or x <= 0 or x >= n:
            continue
        p = x / n
        dof += len(group) - 1
        for d in group:
            e = s.trials[d] * p
            expected += e
            if e > 0:
                chi2 += (s.counts[d] - e) ** 2 / (e * (1 - p))
    if dof <= 0 or expected / len(days) < MIN_EXPECTED:
        return 1.0
    return min(max(chi2 / dof, 1.0), MAX_DISPERSION)


class Monitor:
    """Watches every (segment, metric) series day by day; :meth:`update` returns the day's alerts.

    Args:
        cfg: thresholds.
        segments: the segment names (default: the four declared goals, ``undeclared`` and
            ``all``, whose counts the monitor sums from the others).
    """

    def __init__(self, cfg: MonitorConfig | None = None, segments=WATCHED) -> None:
        self.cfg = cfg or MonitorConfig()
        self.segments = tuple(segments)
        c = self.cfg
        self.series = {
            (seg, name, direction): _Series(
                name,
                outcome,
                direction,
                (c.visit_shift,) if outcome == "visited" else (c.shift, c.large_shift),
            )
            for seg in self.segments
            for name, outcome, direction in METRICS
        }
        self.threshold = c.threshold(sum(len(s.shifts) for s in self.series.values()))
        self.alerts: list[Alert] = []
        self.in_alert: set[tuple[str, str, str]] = set()

    def baseline(self, key: tuple[str, str, str]) -> float | None:
        """The series' baseline rate today (None until it has enough history)."""
        b = self._baseline(key)
        return None if b is None else b[0]

    def _baseline(self, key: tuple[str, str, str]) -> tuple[float, float, float] | None:
        """(baseline rate, dispersion, relative variance of the rate's estimate) today, or None
        until the series has enough history."""
        s = self.series[key]
        today = len(s.counts)
        if s.frozen is not None:
            if s.thaw_day is None or today < s.thaw_day:
                return s.frozen
            s.frozen = s.thaw_day = None
        end = today - self.cfg.guard_days
        unpaused = (d for d in range(end - 1, -1, -1) if not s.paused[d])
        days = list(islice(unpaused, self.cfg.baseline_days))
        if len(days) < self.cfg.baseline_days:
            return None
        days.reverse()
        n = sum(s.trials[d] for d in days)
        if n <= 0:
            return None
        events = sum(s.counts[d] for d in days)
        rate, spread = events / n, 1.0 / max(events, 1.0)
        if s.outcome in SEASONAL and rate > 0:
            # today's weekday's share of the window, times the level of the window's last week
            same = [d for d in days if (today - d) % 7 == 0]
            week = days[-7:]
            n_same, n_week = sum(s.trials[d] for d in same), sum(s.trials[d] for d in week)
            x_same, x_week = sum(s.counts[d] for d in same), sum(s.counts[d] for d in week)
            if n_same <= 0 or n_week <= 0:
                return None
            rate = x_same / n_same / rate * x_week / n_week
            spread = 1.0 / max(x_same, 1.0) + 1.0 / max(x_week, 1.0)
        return min(max(rate, self.cfg.min_rate), 0.5), _dispersion(s, days), spread

    def update(
        self,
        day: int,
        counts: Mapping[tuple[str, str], tuple[float, float]],
        paused: Set[str] = frozenset(),
    ) -> list[Alert]:
        """Add a day: ``counts[(segment, outcome)] = (events, units)``; returns the alerts raised
        today (a series in alert raises no new one until it has returned). Segments in
        ``paused`` (on a fallback: what they are sent is not the policy's) are counted, not
        tested."""
        today = []
        for key, s in self.series.items():  # the segments first, everyone together last
            seg = key[0]
            if seg == EVERYONE:
                # every client but those of segments on a fallback or already in alert on this
                # metric: an alert here is news about the others
                named = {o for o in self.segments if (o, *key[1:]) in self.in_alert}
                if any((a.metric, a.direction) == key[1:] for a in today):
                    s.statistics = [0.0] * len(s.shifts)  # what it gathered was that segment's
                left = [o for o in self.segments if o != seg and o not in paused | named]
                x = sum(counts.get((o, s.outcome), (0.0, 0.0))[0] for o in left)
                n = sum(counts.get((o, s.outcome), (0.0, 0.0))[1] for o in left)
            else:
                x, n = counts.get((seg, s.outcome), (0.0, 0.0))
            base = self._baseline(key)
            s.counts.append(float(x))
            s.trials.append(float(n))
            s.paused.append(seg in paused)
            if base is None or n <= 0 or seg in paused:
                continue
            p0, phi, spread = base
            # today's count varies by phi·n·p0 around n·p0 and the baseline's own estimate by
            # phi·(n·p0)²·spread: the ratio of the two widens the test where the baseline is thin
            phi *= 1.0 + n * p0 * spread
            for i, shift in enumerate(s.shifts):
                p1 = min(p0 * shift if s.direction == "up" else p0 / shift, 0.999)
                llr = x * math.log(p1 / p0) + (n - x) * math.log((1 - p1) / (1 - p0))
                s.statistics[i] = max(0.0, s.statistics[i] + llr / phi)
            if s.statistic > self.threshold and key not in self.in_alert:
                alert = Alert(day, seg, s.name, s.direction, p0, x / n, s.statistic, self.threshold)
                today.append(alert)
                self.in_alert.add(key)
                s.frozen, s.thaw_day = base, None
        self.alerts.extend(today)
        return today

    def release(self, key: tuple[str, str, str]) -> None:
        """End a series' alert (the breaker decides when): its statistics restart from 0. A
        rate's baseline stays the one from before the alert until the baseline window is clear of
        the alert's days, so a change that has not ended is found again at once. Visits' baseline
        (last week's level) follows the days since the return at once: the breaker returns a
        segment only after a week back within band, and a level frozen from before would
        mistake the slow rise of visits as trust grows under a good policy for a new change
        (measured: 6 alerts in 485 calm days against 2 with the monitor watching only)."""
        self.in_alert.discard(key)
        s = self.series[key]
        s.statistics = [0.0] * len(s.shifts)
        if s.outcome in SEASONAL:
            s.frozen = s.thaw_day = None
        else:
            s.thaw_day = len(s.counts) + self.cfg.guard_days + self.cfg.baseline_days

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
    """One day's (events, units) per (declared segment, outcome) among living clients: per
    delivered message for opt-outs, complaints, clicks and anxious clicks; per living client for
    churn and organic visits (a visit that was not a message's click). The monitor sums ``all``
    from these itself."""
    out = {}
    sent = np.asarray(outcomes["sent"], dtype=bool)
    clicked = np.asarray(outcomes.get("clicked", np.zeros_like(sent)), dtype=bool)
    for i, seg in enumerate(SEGMENT_NAMES):
        who = alive & (segment == i)
        for outcome in dict.fromkeys(o for _, o, _ in METRICS):
            if outcome not in outcomes:  # not logged (a firm's log has no anxious label)
                continue
            events = np.asarray(outcomes[outcome], dtype=bool) & who
            if outcome in PER_MESSAGE:
                out[(seg, outcome)] = (float((events & sent).sum()), float((who & sent).sum()))
            elif outcome == "visited":
                out[(seg, outcome)] = (float((events & ~clicked).sum()), float(who.sum()))
            else:
                out[(seg, outcome)] = (float(events.sum()), float(who.sum()))
    return out


def watch_logs(
    frame: pl.DataFrame, cfg: MonitorConfig | None = None, progress: bool = False
) -> Monitor:
    """Run the monitor over a logged dataset (docs/logged-data.md), day by day (``progress``: a
    bar over the days, shown on a terminal)."""
    monitor = Monitor(cfg)
    days = frame.sort("day").group_by(["day"], maintain_order=True)
    total = frame["day"].n_unique()
    for (day,), rows in tqdm(
        days, total=total, desc="watching", unit="day", disable=None if progress else True
    ):
        obs = rows.select(FEATURE_NAMES).to_numpy()
        outcomes = {o: rows[o].to_numpy() for _, o, _ in METRICS if o in rows.columns} | {
            "sent": rows["sent"].to_numpy()
        }
        monitor.update(int(day), day_counts(segments_of(obs), np.ones(rows.height, bool), outcomes))
    return monitor


def write_circuit(monitor: Monitor, path: str | Path, first_day: dt.date | None = None) -> Path:
    """Write the serving circuit file (``serve/circuit.py``) tripping every segment with a
    series still in alert, atomically; with ``first_day`` (the date of the log's day 0) each
    switch is dated by its first alert, so the runtime sends the fallback's first message.

    The file is written by :func:`serve.circuit.write`, the format's one writer: atomically, it
    keeps the mode of the file it replaces (a new one is 0644), a symlink at ``path`` has its
    target replaced, and a FIFO, device or directory there is refused
    (:class:`serve.files.NotARegularFile`)."""
    since: dict[str, int] = {}
    for alert in monitor.alerts:
        if any(k[0] == alert.segment for k in monitor.in_alert):
            since.setdefault(alert.segment, alert.day)
    if first_day is None:
        tripped: list[str] | dict[str, dt.date] = sorted(since)
    else:
        tripped = {s: first_day + dt.timedelta(days=d) for s, d in since.items()}
    reasons = [
        f"{a.segment} {a.metric} {a.direction} on day {a.day}: {a.observed:.4g} vs {a.baseline:.4g}"
        for a in monitor.alerts
        if a.segment in since
    ]
    return circuit.write(path, tripped, "; ".join(reasons))

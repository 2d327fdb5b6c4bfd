"""A circuit breaker around any policy: on a monitor alert the affected segment switches to a
safe fallback until its alerted metrics are back within their baseline band for a set number of
days; every switch and return is logged with its reason.

The breaker is itself a :class:`agents.base.Policy` that uses two of its hooks:
``start_rollout()`` before the first day and ``after_day(day, outcomes, alive)`` after each
(the day's outcomes of every client; the breaker counts only what a firm sees: outcomes and the
declared segments of the observation, never latent state). It passes ``bind`` and
``start_rollout`` on to the policy it wraps, not ``after_day``: a tripped segment was sent the
fallback's messages, and a policy that learns from its own days would learn from messages it did
not choose. ``trip(segment, day)`` and ``release(segment, day)`` let an engineer do it by hand.

It lives above the crisis monitor (:mod:`evaluation.monitor`), whose statistics it acts on; the
serving runtime's side of it (the circuit file and the same fallback over the manifest's names)
is :mod:`serve.circuit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import polars as pl

from agents.base import Policy
from agents.heuristics import CONTENT, SLOT, TONE, with_channel_fallback
from envs.core import CadenceCore
from envs.features import I_WEEKDAY
from evaluation.monitor import (
    EVERYONE,
    SEGMENT_NAMES,
    WATCHED,
    Monitor,
    MonitorConfig,
    day_counts,
    segments_of,
)
from simulate.config import ConfigError, num

FALLBACK_MOVES = ("click_rate",)
"""metrics the fallback itself moves (its own messages are clicked less than the policy's): while
a segment is on the fallback they say nothing about the policy, so its return waits on the others
and on ``hold_days``; if the policy's messages still misfire after the return, the series, held
at its baseline from before the alert, is tested again at once"""


class SafeFallback(Policy):
    """Reassuring and educational, low frequency, no product offers: by default an education
    message in a reassuring tone on Monday and Thursday mornings (e-mail, else push, else SMS).

    Args:
        tone, content: names from the action space (never ``product_offer``).
        weekdays: days of the week it sends on (0 = Monday).
    """

    name = "safe_fallback"

    def __init__(
        self, tone: str = "reassuring", content: str = "education", weekdays=(0, 3)
    ) -> None:
        if content == "product_offer":
            raise ValueError("fallback content: a fallback sends no product offers")
        weekdays = sorted(set(weekdays))
        if tone not in TONE or content not in CONTENT or not all(0 <= d <= 6 for d in weekdays):
            raise ValueError(
                f"fallback: tone must be one of {list(TONE)}, content one of {list(CONTENT)}, "
                f"weekdays within 0-6; got {tone!r}, {content!r}, {weekdays}"
            )
        self.tone, self.content = TONE[tone], CONTENT[content]
        self.weekdays = [I_WEEKDAY + d for d in weekdays]

    def act(
        self, obs: np.ndarray, masks: np.ndarray, first: np.ndarray | None = None
    ) -> np.ndarray:
        """Actions for ``obs``; ``first`` (bool per client) also sends to clients whose segment
        switched yesterday, whatever the weekday."""
        send = obs[:, self.weekdays].max(axis=1, initial=0.0) > 0.5
        if first is not None:
            send |= first
        return with_channel_fallback(SLOT["morning"], self.tone, self.content, send, masks)


@dataclass
class BreakerConfig:
    """When a tripped segment comes back, and what it gets meanwhile (``crisis.breaker.*``)."""

    hold_days: int = num(7, 1, 365)
    """days an alerted metric must be back within its band before the segment returns (and the
    least time a segment stays on the fallback); a segment that trips again sooner than its last
    hold after returning holds twice as long (the trouble was not over)"""
    band: float = num(0.5, 0.0, 1.0)
    """within band: the rate over the last ``hold_days`` off its baseline by at most this share
    of the change the monitor's test is tuned to, on a log scale (0.5: for a series tuned to a
    doubling, at most 1.41 times the baseline for a rise, at least 1/1.41 of it for a fall; for
    visits, tuned to 1.3, within 1.14)"""
    fallback_tone: str = "reassuring"
    """tone of the safe fallback's messages"""
    fallback_content: str = "education"
    """content of the safe fallback's messages (never ``product_offer``)"""
    fallback_weekdays: list[int] = field(default_factory=lambda: [0, 3])
    """days of the week the safe fallback sends on (0 = Monday): twice a week by default, as
    calm and regular as a crisis allows (measured under market_shock, README: once a week let
    more clients go)"""
    escalate: int = num(2, 1, 6)
    """when this many declared segments (or ``undeclared``) are on the fallback at once, every
    client goes on it: a change that reaches several segments reaches everyone (a market shock
    is seen first where it is strongest)"""
    first_message: bool = True
    """the fallback also sends the day after a segment switches, whatever the weekday (so a
    segment in a crisis hears a reassuring word at once, not on the next fallback weekday)"""

    def __post_init__(self) -> None:
        if self.hold_days < 1:
            raise ValueError(f"crisis.breaker.hold_days must be >= 1, got {self.hold_days}")
        if not 0.0 <= self.band <= 1.0:
            raise ValueError(f"crisis.breaker.band must lie in [0, 1], got {self.band}")

    def check(self, prefix: str) -> None:
        if self.fallback_content == "product_offer":
            raise ConfigError(f"{prefix}.fallback_content: a fallback sends no product offers")
        if self.fallback_content not in CONTENT:
            raise ConfigError(
                f"{prefix}.fallback_content must be one of {list(CONTENT)}, "
                f"got {self.fallback_content!r}"
            )
        if self.fallback_tone not in TONE:
            raise ConfigError(
                f"{prefix}.fallback_tone must be one of {list(TONE)}, got {self.fallback_tone!r}"
            )
        if not all(isinstance(d, int) and 0 <= d <= 6 for d in self.fallback_weekdays):
            raise ConfigError(
                f"{prefix}.fallback_weekdays must be days 0-6 (0 = Monday), "
                f"got {list(self.fallback_weekdays)}"
            )

    def fallback(self) -> SafeFallback:
        """The safe fallback this config describes."""
        return SafeFallback(self.fallback_tone, self.fallback_content, self.fallback_weekdays)


class CircuitBreaker(Policy):
    """``policy`` with a monitor and a fallback per declared segment.

    It declares what the policy it wraps declares (privileged, stochastic), and is
    history-dependent whatever it wraps: which segments are on the fallback depends on the days
    it has watched.

    Args:
        policy: the policy served while the circuit is closed.
        fallback: what a tripped segment gets (default: the one ``cfg`` describes).
        monitor: the monitor's thresholds.
        cfg: when a segment returns.
        act_on_alerts: False watches only: alerts are raised and logged, no segment switches
            (a hand trip still does); the policy's decisions are untouched.
    """

    def __init__(
        self,
        policy: Policy,
        fallback: Policy | None = None,
        monitor: MonitorConfig | None = None,
        cfg: BreakerConfig | None = None,
        act_on_alerts: bool = True,
    ) -> None:
        self.policy = policy
        self.cfg = cfg or BreakerConfig()
        self.fallback = fallback or self.cfg.fallback()
        self.monitor_cfg = monitor or MonitorConfig()
        self.act_on_alerts = act_on_alerts
        self.name = f"{policy.name}+{'breaker' if act_on_alerts else 'watch'}"
        self.stochastic = policy.stochastic
        self.start_rollout()

    history_dependent = True
    """which segments get the fallback depends on the days it has watched"""

    @property
    def privileged(self) -> bool:  # type: ignore[override]
        """whether the policy it wraps reads the world it acts in"""
        return self.policy.privileged

    def bind(self, core: CadenceCore) -> None:
        """Pass the world on to a privileged policy it wraps."""
        self.policy.bind(core)

    # ----- state ---------------------------------------------------------------------------
    def start_rollout(self) -> None:
        """Forget every day seen: a fresh monitor, every segment on the policy."""
        self.monitor = Monitor(self.monitor_cfg)
        self.tripped: dict[str, int] = {}
        """segment -> day it switched to the fallback"""
        self.by_hand: set[str] = set()
        """segments tripped by hand: they return only by hand"""
        self.hold: dict[str, int] = {}
        """segment -> days its current switch holds at least (doubled by each quick re-trip)"""
        self.returned: dict[str, int] = {}
        """segment -> day it last returned"""
        self.events: list[dict] = []
        self._segment: np.ndarray | None = None
        self._day = 0
        """the day the next act() decides"""
        self.policy.start_rollout()

    def trip(self, segment: str, day: int, reason: str = "by hand") -> None:
        """Switch ``segment`` to the fallback (no-op if it already is)."""
        if segment not in WATCHED:
            raise ValueError(f"unknown segment {segment!r}; use one of {list(WATCHED)}")
        if segment not in self.tripped:
            self.tripped[segment] = day
            if reason == "by hand":
                self.by_hand.add(segment)
            back = self.returned.get(segment)
            quick = back is not None and day - back < self.hold.get(segment, self.cfg.hold_days)
            self.hold[segment] = 2 * self.hold[segment] if quick else self.cfg.hold_days
            if quick:
                reason += (
                    f" (again {day - back} days after returning: holds {self.hold[segment]} days)"
                )
            self.events.append(
                {"day": day, "segment": segment, "event": "switch", "reason": reason}
            )

    def release(self, segment: str, day: int, reason: str = "by hand") -> None:
        """Return ``segment`` to the policy and end its series' alerts."""
        if segment in self.tripped:
            del self.tripped[segment]
            self.by_hand.discard(segment)
            self.returned[segment] = day
            for key in [k for k in self.monitor.in_alert if k[0] == segment]:
                self.monitor.release(key)
            self.events.append(
                {"day": day, "segment": segment, "event": "return", "reason": reason}
            )

    def event_log(self) -> pl.DataFrame:
        """Every switch and return: day, segment, event, reason."""
        schema = {"day": pl.Int64, "segment": pl.Utf8, "event": pl.Utf8, "reason": pl.Utf8}
        return pl.DataFrame(self.events, schema=schema)

    # ----- Policy ----------------------------------------------------------------------------
    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        self._segment = segments_of(obs)
        actions = np.array(self.policy.act(obs, masks), dtype=np.int64, copy=True)
        if self.tripped:
            safe = self._covered(self.tripped)
            if safe.any():
                fresh = {s for s, d in self.tripped.items() if d == self._day - 1}
                first = self._covered(fresh)[safe] if self.cfg.first_message else None
                if isinstance(self.fallback, SafeFallback):
                    actions[safe] = self.fallback.act(obs[safe], masks[safe], first)
                else:
                    actions[safe] = self.fallback.act(obs[safe], masks[safe])
        return actions

    def _covered(self, segments) -> np.ndarray:
        """Today's clients in any of ``segments`` (``all``: every client)."""
        if EVERYONE in segments:
            return np.ones(len(self._segment), dtype=bool)
        return np.isin(self._segment, [SEGMENT_NAMES.index(s) for s in segments])

    def after_day(self, day: int, outcomes: dict[str, np.ndarray], alive: np.ndarray) -> None:
        """Count the day, switch segments the monitor alerts on, return those back in band."""
        if self._segment is None:
            raise RuntimeError("after_day before act: the breaker has not seen today's clients")
        paused = set(self.tripped) if self.act_on_alerts else set()
        counts = day_counts(self._segment, np.asarray(alive, dtype=bool), outcomes)
        self._day = day + 1
        if EVERYONE in paused:
            paused = set(WATCHED)
        for alert in self.monitor.update(day, counts, paused):
            if not self.act_on_alerts:
                continue
            reason = (
                f"{alert.metric} {alert.direction}: {alert.observed:.4g} against a baseline of "
                f"{alert.baseline:.4g} (CUSUM {alert.statistic:.1f} > {alert.threshold:.1f})"
            )
            self.trip(alert.segment, day, reason)
        several = sorted(s for s in self.tripped if s != EVERYONE and s not in self.by_hand)
        if (
            self.act_on_alerts
            and EVERYONE not in self.tripped
            and len(several) >= self.cfg.escalate
        ):
            self.trip(
                EVERYONE, day, f"{len(several)} segments on the fallback: {', '.join(several)}"
            )
        for segment, since in list(self.tripped.items()):
            if segment in self.by_hand:
                continue
            hold = self.hold.get(segment, self.cfg.hold_days)
            if day - since + 1 >= hold and self._back_in_band(segment):
                self.release(segment, day, f"back within band for {self.cfg.hold_days} days")

    def _back_in_band(self, segment: str) -> bool:
        h = self.cfg.hold_days
        for key in [k for k in self.monitor.in_alert if k[0] == segment]:
            if key[1] in FALLBACK_MOVES:
                continue
            s = self.monitor.series[key]
            n = sum(s.trials[-h:])
            if n <= 0:
                continue
            rate = sum(s.counts[-h:]) / n
            band = min(s.shifts) ** self.cfg.band
            base = s.frozen[0]
            if key[2] == "up" and rate > base * band:
                return False
            if key[2] == "down" and rate < base / band:
                return False
        return True

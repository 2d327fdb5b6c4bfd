"""Scenarios as data: the effect of a scenario's events on one calendar day."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulate.config import ScenarioConfig
from simulate.labels import CONTENTS, N_CONTENTS, N_SEGMENTS, SEGMENTS


@dataclass(frozen=True)
class DayEffects:
    """What the scenario does on one day, for every client alive that day."""

    anxiety_shock: float
    """anxiety added today, x susceptibility"""
    trust_shock: float
    """trust added today"""
    stress: float
    """market stress today (0 = calm); observable at tier >= 2"""
    relevance_delta: np.ndarray
    """(segments, contents) relevance added today"""
    send_trust: np.ndarray
    """(segments, contents) trust change per delivered message today"""


class ScenarioSchedule:
    """Turns a :class:`ScenarioConfig` into per-day effects (cached per day)."""

    def __init__(self, cfg: ScenarioConfig) -> None:
        self.cfg = cfg
        self._cache: dict[int, DayEffects] = {}

    def effects(self, day: int) -> DayEffects:
        """Effects on calendar ``day`` (int, days since the start of the simulation)."""
        cached = self._cache.get(day)
        if cached is not None:
            return cached
        anxiety = trust = stress = 0.0
        relevance = np.zeros((N_SEGMENTS, N_CONTENTS))
        send_trust = np.zeros((N_SEGMENTS, N_CONTENTS))
        for ev in self.cfg.events:
            if day == ev.start_day:
                anxiety += ev.anxiety_shock
                trust += ev.trust_shock
            if ev.stress_peak > 0 and day >= ev.start_day:
                stress += ev.stress_peak * 0.5 ** ((day - ev.start_day) / ev.stress_half_life_days)
            if ev.start_day <= day <= ev.end_day:
                rows = slice(None) if ev.segment == "all" else SEGMENTS.index(ev.segment)
                cols = (
                    slice(None)
                    if "all" in ev.content
                    else [CONTENTS.index(c) for c in dict.fromkeys(ev.content)]
                )
                relevance[rows, cols] += ev.relevance_delta
                send_trust[rows, cols] += ev.send_trust_delta
        out = DayEffects(anxiety, trust, stress, relevance, send_trust)
        if len(self._cache) < 100_000:
            self._cache[day] = out
        return out

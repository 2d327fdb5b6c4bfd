"""Fixed client traits, drawn per client from counter-based streams."""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import numpy as np
from scipy.special import ndtri

from simulate import rng
from simulate.config import PopulationConfig
from simulate.labels import N_CHANNELS, N_SLOTS, N_TONES

# Draw names of the trait streams; changing one changes every synthetic client.
S_SEGMENT, S_TIER, S_GENDER, S_AGE, S_SLOT = 101, 102, 103, 104, 105
S_LITERACY, S_SUSCEPTIBILITY, S_RISK, S_DECLARED = 106, 107, 108, 109
S_BASE_OPEN, S_WEEKEND, S_TRUST, S_VISIT, S_AWAY = 110, 111, 112, 113, 114
S_DECLARED_SLOT = 115
S_CHANNEL0 = 120  # + channel index
S_TONE0 = 130  # + tone index


MAX_DAYS_AWAY = 365
"""days since the last visit are counted up to this (a year away reads as a year)"""


def days_away_at_start(u: np.ndarray, visit_propensity: np.ndarray) -> np.ndarray:
    """Days since the last visit of a new client: a geometric draw at the client's own daily
    visit probability, 1..:data:`MAX_DAYS_AWAY` (int16)."""
    p = sigmoid(visit_propensity)
    gap = 1.0 + np.floor(np.log(u) / np.log1p(-p))
    return np.minimum(gap, MAX_DAYS_AWAY).astype(np.int16)


def declared_slot(slot: np.ndarray, z: np.ndarray, noise_sd: float) -> np.ndarray:
    """The contact time a client declares (int8 0..5): the favourite ``slot`` plus ``noise_sd``
    times the standard normal ``z``, rounded half to even and kept within the day."""
    return np.clip(np.rint(slot + noise_sd * z), 0, N_SLOTS - 1).astype(np.int8)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, elementwise."""
    return 1.0 / (1.0 + np.exp(-x))


@functools.lru_cache(maxsize=256)
def _edges(probs: tuple[float, ...]) -> tuple[np.ndarray, bool]:
    """(cumulative edges of ``probs``, whether they never decrease), made once per ``probs``."""
    edges = np.cumsum(np.asarray(probs, dtype=np.float64))[:-1]
    edges.flags.writeable = False
    return edges, bool(np.all(edges[1:] >= edges[:-1]))


@functools.lru_cache(maxsize=256)
def _table(values: tuple) -> np.ndarray:
    """``np.asarray(values)``, made once per ``values`` (read-only)."""
    table = np.asarray(values)
    table.flags.writeable = False
    return table


def categorical(u: np.ndarray, probs: list[float]) -> np.ndarray:
    """Index of the category each uniform ``u`` falls in, by cumulative ``probs`` (int8): the
    number of edges at or below ``u`` (a binary search where the edges never decrease)."""
    edges, ordered = _edges(tuple(map(float, probs)))
    if ordered:
        return np.searchsorted(edges, u, side="right").astype(np.int8)
    return (u[:, None] >= edges[None, :]).sum(axis=1).astype(np.int8)


@dataclass
class Traits:
    """Fixed traits of N clients; each array's first axis is the client."""

    segment: np.ndarray
    """int8 goal segment (index into ``labels.SEGMENTS``); declared, observable at tier >= 1"""
    consent_tier: np.ndarray
    """int8 consent tier 0..3; limits what the policy may see"""
    gender: np.ndarray
    """int8 protected attribute, audit only"""
    age_band: np.ndarray
    """int8 protected attribute, audit only"""
    slot_preference: np.ndarray
    """int8 favourite send slot 0..5"""
    declared_slot: np.ndarray
    """int8 preferred contact time declared at onboarding, 0..5 (noisy copy of
    ``slot_preference``; observable at tier >= 1)"""
    literacy: np.ndarray
    """financial literacy 0..1"""
    susceptibility: np.ndarray
    """anxiety susceptibility 0..1"""
    risk: np.ndarray
    """true risk tolerance 0..1"""
    declared_risk: np.ndarray
    """declared risk tolerance 0..1 (noisy copy of ``risk``; observable)"""
    base_open: np.ndarray
    """own open propensity (logit offset)"""
    weekend_affinity: np.ndarray
    """open logit added on Saturdays and Sundays"""
    initial_trust: np.ndarray
    """trust 0..1 at onboarding"""
    channel_affinity: np.ndarray
    """(N, 3) open logit added per channel"""
    tone_affinity: np.ndarray
    """(N, 5) calm-click logit added per tone"""
    visit_propensity: np.ndarray
    """own daily organic visit logit (the day after a visit, trust 0.5, calm weekday)"""
    initial_days_away: np.ndarray
    """int16 days since the last visit at onboarding, 1..MAX_DAYS_AWAY"""

    def assign(self, rows: np.ndarray, other: Traits) -> None:
        """Overwrite the clients at ``rows`` with ``other``'s clients, in order."""
        for f in fields(self):
            getattr(self, f.name)[rows] = getattr(other, f.name)

    def nbytes(self) -> int:
        """Bytes held by all trait arrays."""
        return sum(getattr(self, f.name).nbytes for f in fields(self))


_UNIFORM_STREAMS = (S_SEGMENT, S_AGE, S_SLOT, S_TIER, S_GENDER, S_AWAY)
"""the trait streams read as uniforms"""
_NORMAL_STREAMS = (
    S_LITERACY,
    S_SUSCEPTIBILITY,
    S_RISK,
    *(S_CHANNEL0 + c for c in range(N_CHANNELS)),
    *(S_TONE0 + t for t in range(N_TONES)),
    S_VISIT,
    S_DECLARED_SLOT,
    S_DECLARED,
    S_BASE_OPEN,
    S_WEEKEND,
    S_TRUST,
)
"""the trait streams read as standard normals (``ndtri`` of the uniform)"""
_TRAIT_TERMS = rng.stream_terms(_UNIFORM_STREAMS + _NORMAL_STREAMS)
"""the uniform streams' terms, then the normal streams'"""
_NORMAL_ROW = {stream: row for row, stream in enumerate(_NORMAL_STREAMS)}
_N_UNIFORM = len(_UNIFORM_STREAMS)
_CHANNEL_ROWS = slice(_NORMAL_ROW[S_CHANNEL0], _NORMAL_ROW[S_CHANNEL0] + N_CHANNELS)
_TONE_ROWS = slice(_NORMAL_ROW[S_TONE0], _NORMAL_ROW[S_TONE0] + N_TONES)


def sample_traits(
    cfg: PopulationConfig, seed: int, client_ids: np.ndarray, client_keys: np.ndarray | None = None
) -> Traits:
    """Draw the traits of the clients with ``client_ids`` (uint64) under ``seed``.

    A client's traits depend only on (seed, client id, config), never on the other ids.
    ``client_keys``: the ids' :func:`simulate.rng.client_keys` under ``seed``, where the caller
    holds them (the same draws, one hash less).
    """
    if client_keys is None:
        keys = rng.day_keys(seed, client_ids, rng.TRAIT_DAY)
    else:
        keys = rng.keys_on(client_keys, rng.TRAIT_DAY)
    draws = rng.uniform_streams(keys, _TRAIT_TERMS)
    u = dict(zip(_UNIFORM_STREAMS, draws[:_N_UNIFORM], strict=True))
    normal = ndtri(draws[_N_UNIFORM:])

    def z(stream: int) -> np.ndarray:
        return normal[_NORMAL_ROW[stream]]

    segment = categorical(u[S_SEGMENT], cfg.segment_probs)
    age_band = categorical(u[S_AGE], cfg.age_band_probs)
    literacy = np.clip(
        cfg.literacy_mean
        + _table(tuple(cfg.literacy_age_shift))[age_band]
        + cfg.literacy_sd * z(S_LITERACY),
        0.0,
        1.0,
    )
    susceptibility = sigmoid(
        cfg.susceptibility_logit_mean
        + _table(tuple(cfg.susceptibility_age_shift))[age_band]
        + cfg.susceptibility_literacy * (literacy - 0.5)
        + cfg.susceptibility_logit_sd * z(S_SUSCEPTIBILITY)
    )
    risk = sigmoid(_table(tuple(cfg.risk_segment_shift))[segment] + cfg.risk_logit_sd * z(S_RISK))
    # column c: mean[c] + sd x z(stream c), one product and one sum per element as ever
    channel_affinity = np.ascontiguousarray(
        (
            cfg.channel_affinity_sd * normal[_CHANNEL_ROWS]
            + _table(tuple(cfg.channel_affinity_mean))[:, None]
        ).T
    )
    tone_affinity = np.ascontiguousarray(
        (
            cfg.tone_affinity_sd * normal[_TONE_ROWS]
            + _table(tuple(cfg.tone_affinity_mean))[:, None]
        ).T
    )
    visit_propensity = cfg.visit_logit_mean + cfg.visit_logit_sd * z(S_VISIT)
    slot = categorical(u[S_SLOT], cfg.slot_preference_probs)
    return Traits(
        segment=segment,
        consent_tier=categorical(u[S_TIER], cfg.consent_tier_probs),
        gender=categorical(u[S_GENDER], cfg.gender_probs),
        age_band=age_band,
        slot_preference=slot,
        declared_slot=declared_slot(slot, z(S_DECLARED_SLOT), cfg.declared_slot_noise_sd),
        literacy=literacy,
        susceptibility=susceptibility,
        risk=risk,
        declared_risk=np.clip(risk + cfg.declared_risk_noise_sd * z(S_DECLARED), 0.0, 1.0),
        base_open=cfg.base_open_sd * z(S_BASE_OPEN),
        weekend_affinity=cfg.weekend_affinity_sd * z(S_WEEKEND),
        initial_trust=np.clip(
            cfg.initial_trust_mean + cfg.initial_trust_sd * z(S_TRUST), 0.05, 0.95
        ),
        channel_affinity=channel_affinity,
        tone_affinity=tone_affinity,
        visit_propensity=visit_propensity,
        initial_days_away=days_away_at_start(u[S_AWAY], visit_propensity),
    )

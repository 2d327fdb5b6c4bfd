"""Consent gating: which observation features a client's consent tier lets a policy see.

Tiers follow a consent-first framework: 0 no personalisation (calendar, consent, opt-outs and
the firm's own send log: what it sent, when, on which channel, in which tone; what every send
needs to respect the guardrails), 1 basic history (the client's own visits, visits in 30 days,
declared goal, risk and preferred contact time), 2 enhanced context (market stress), 3
predictive behavioural (engagement averages: responses by channel, slot and tone). A feature the tier does not allow reads 0. The tier
limits what a policy may *see*; which contents it may *send* is a guardrail (``envs/masks.py``).
"""

from __future__ import annotations

import numpy as np

from envs.features import (
    I_DECLARED_SLOT,
    I_ENGAGEMENT,
    I_GOAL,
    I_RISK,
    I_STRESS,
    I_VISIT_RECENCY,
    I_VISITS,
    OBS_DIM,
    raw_features,
)
from simulate.labels import N_SEGMENTS, N_SLOTS
from simulate.world import N_ENGAGEMENT, World

MIN_TIER = np.zeros(OBS_DIM, dtype=np.int8)
"""lowest consent tier at which each feature is visible"""
MIN_TIER[I_VISIT_RECENCY] = 1
MIN_TIER[I_VISITS] = 1
MIN_TIER[I_GOAL : I_GOAL + N_SEGMENTS] = 1
MIN_TIER[I_RISK] = 1
MIN_TIER[I_DECLARED_SLOT : I_DECLARED_SLOT + N_SLOTS] = 1
MIN_TIER[I_STRESS] = 2
MIN_TIER[I_ENGAGEMENT : I_ENGAGEMENT + N_ENGAGEMENT] = 3


def visible(tier: np.ndarray) -> np.ndarray:
    """(N, OBS_DIM) bool: which features each client's consent tier (N,) lets a policy see."""
    return np.asarray(tier)[:, None] >= MIN_TIER[None, :]


def gate(obs: np.ndarray, tier: np.ndarray) -> np.ndarray:
    """Zero, in place, every feature of (N, OBS_DIM) ``obs`` that the clients' tiers hide; returns ``obs``."""
    obs *= visible(tier)
    return obs


def observe(
    world: World,
    day: int,
    stress: float,
    out: np.ndarray | None = None,
    counts: np.ndarray | None = None,
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """(N, OBS_DIM) float32 observations a policy may see on calendar ``day``: the features,
    consent-gated (``out``, ``counts``, ``rows``: as :func:`envs.features.raw_features` takes them)."""
    tier = world.traits.consent_tier if rows is None else world.traits.consent_tier[rows]
    return gate(raw_features(world, day, stress, out, counts, rows), tier)

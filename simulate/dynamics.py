"""How latent state moves: the trust and anxiety a message leaves behind, and the daily churn
hazard. One writing of each rule, read by the batched world (its draws) and by the privileged
oracle (its lookahead); ``simulate/reference.py`` keeps its own per-client writing on purpose,
as the independent check.
"""

from __future__ import annotations

import numpy as np

from simulate.config import ResponseConfig


def expit(x: np.ndarray) -> np.ndarray:
    """Logistic function, computed in place on the temporary ``x`` (several times faster than scipy's)."""
    np.negative(x, out=x)
    np.exp(x, out=x)
    x += 1.0
    return np.reciprocal(x, out=x)


def trust_change(
    p: ResponseConfig,
    relevance: np.ndarray,
    urgency: np.ndarray,
    late: np.ndarray,
    converted: np.ndarray,
    harmful: np.ndarray,
    send_trust: np.ndarray | float = 0.0,
) -> np.ndarray:
    """Trust (0..1 scale) a delivered message adds, before clipping.

    Relevant content builds trust, urgency (fear) and a late-slot send erode it, a conversion
    builds it and a harmful action (panic selling) erodes it; ``send_trust`` is the scenario's
    extra effect of this content on this segment today. ``converted`` and ``harmful`` may be
    0/1 outcomes or their probabilities (the oracle's expectation).
    """
    return (
        p.trust_relevance * relevance
        - p.trust_fear * urgency
        - p.trust_late * late
        + send_trust
        + p.trust_conversion * converted
        - p.trust_harm * harmful
    )


def anxiety_after_message(
    p: ResponseConfig,
    anxiety: np.ndarray,
    susceptibility: np.ndarray,
    urgency: np.ndarray,
    relief: np.ndarray,
) -> np.ndarray:
    """Anxiety (0..1, before clipping) after a message: urgency adds to it in proportion to
    susceptibility, then the tone's relief (reassuring, educational) takes a share away."""
    return (anxiety + p.anxiety_urgency * susceptibility * urgency) * (1.0 - relief)


def churn_logit(
    p: ResponseConfig, trust: np.ndarray, anxiety: np.ndarray, fatigue: np.ndarray
) -> np.ndarray:
    """Log-odds of churning today: up with low trust, high anxiety and fatigue past tolerance."""
    return (
        p.churn_base
        + p.churn_trust * (0.5 - trust)
        + p.churn_anxiety * anxiety
        + p.churn_fatigue * np.maximum(fatigue - p.fatigue_tolerance, 0.0)
    )


def churn_hazard(
    p: ResponseConfig, trust: np.ndarray, anxiety: np.ndarray, fatigue: np.ndarray
) -> np.ndarray:
    """Daily probability that a client leaves the firm (absorbing): ``expit(churn_logit)``."""
    return expit(churn_logit(p, trust, anxiety, fatigue))

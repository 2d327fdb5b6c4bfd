"""The reward: a weighted sum of each client's outcome counts for the day.

Weights come from ``conf/reward/`` (``engagement``: clicks only; ``balanced``: the default;
``fiduciary``: conversions and retention first). Evaluation always scores policies on the
balanced weights, whatever reward trained them. PPO-Lagrangian also reads the two costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from simulate.config import num


@dataclass
class RewardConfig:
    """Weights of the per-day outcome counts that make the reward (per client-day)."""

    name: str = "balanced"
    """preset name, logged as the ``reward`` tag"""
    calm_click: float = num(1.0, 0.0, 100.0)
    """value of a click not provoked by anxiety"""
    anxious_click: float = num(-1.0, -100.0, 100.0)
    """value of a click provoked by urgency or fear: negative by default"""
    conversion: float = num(4.0, 0.0, 1000.0)
    """value of a beneficial action (contribution set up, education completed, rebalance)"""
    harmful: float = num(-4.0, -1000.0, 0.0)
    """value of a harmful action (panic selling) after an anxious click"""
    unsubscribe: float = num(-2.0, -1000.0, 0.0)
    """value of an unsubscribe from a channel"""
    complaint: float = num(-4.0, -1000.0, 0.0)
    """value of a complaint"""
    churn: float = num(-25.0, -10000.0, 0.0)
    """value of losing the client"""
    message: float = num(-0.05, -100.0, 0.0)
    """cost of each delivered message"""
    violation: float = num(-0.2, -100.0, 0.0)
    """cost of asking for a send the guardrails blocked"""

    def weights(self) -> dict[str, float]:
        """Outcome name -> weight, for the outcome arrays the env produces."""
        return {
            "calm_click": self.calm_click,
            "anxious_click": self.anxious_click,
            "converted": self.conversion,
            "harmful": self.harmful,
            "unsubscribed": self.unsubscribe,
            "complaint": self.complaint,
            "churned": self.churn,
            "sent": self.message,
            "violation": self.violation,
        }


COSTS: dict[str, str] = {"cost_churn": "churned", "cost_anxiety": "anxious_click"}
"""the constrained agent's costs and the outcome each one counts"""


def reward(outcomes: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """(N,) float64 reward: ``sum(weight * outcome)`` over the named outcome arrays (per client-day)."""
    n = len(next(iter(outcomes.values())))
    total = np.zeros(n)
    for name, weight in weights.items():
        if weight:
            total += weight * outcomes[name]
    return total


def costs(outcomes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The constrained agent's per-client costs (float32 counts): churn and anxious clicks."""
    return {cost: outcomes[name].astype(np.float32) for cost, name in COSTS.items()}

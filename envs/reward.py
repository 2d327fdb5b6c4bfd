"""The reward: a weighted sum of each client's outcome counts for the day.

Weights come from ``conf/reward/`` (``engagement``: clicks only; ``balanced``: the default;
``fiduciary``: conversions and retention first; ``observable``: only what a firm can see).
Evaluation always scores policies on the balanced weights, whatever reward trained them, unless
the run names another yardstick (``reward@eval.reward=<name>``). PPO-Lagrangian also reads the
two costs.

The balanced, engagement and fiduciary presets weigh a click by its cause (``calm_click``,
``anxious_click``), which only the simulator knows. An *observable* reward
(``RewardConfig.observable``) weighs only :data:`OBSERVABLE_OUTCOMES`, the counts a firm has in
its own records, so it can be computed on a firm's log: its :meth:`RewardConfig.weights` name no
latent outcome, and :func:`observable_value` reads nothing else.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from simulate.config import ConfigError, num

LATENT_OUTCOMES: tuple[str, ...] = ("calm_click", "anxious_click")
"""outcomes a firm cannot see: why a client clicked (calm interest or anxiety)"""

OBSERVABLE_OUTCOMES: tuple[str, ...] = (
    "sent",
    "opened",
    "clicked",
    "converted",
    "harmful",
    "unsubscribed",
    "complaint",
    "visited",
    "churned",
    "violation",
)
"""outcomes a firm sees in its own records: messages delivered, opens, clicks (of any cause),
conversions, panic trades (``harmful``: a sale the firm executes), unsubscribes, complaints,
visits, account closures (``churned``) and sends its guardrails blocked (``violation``)"""


@dataclass
class RewardConfig:
    """Weights of the per-day outcome counts that make the reward (per client-day)."""

    name: str = "balanced"
    """preset name, logged as the ``reward`` tag"""
    calm_click: float = num(1.0, 0.0, 100.0)
    """value of a click not provoked by anxiety (latent: a firm cannot tell it apart)"""
    anxious_click: float = num(-1.0, -100.0, 100.0)
    """value of a click provoked by urgency or fear: negative by default (latent)"""
    click: float = num(0.0, -100.0, 100.0)
    """value of any click, whatever provoked it (observable); 0 in the latent presets, which
    value the two kinds of click apart instead"""
    conversion: float = num(4.0, 0.0, 1000.0)
    """value of a beneficial action (contribution set up, education completed, rebalance)"""
    harmful: float = num(-4.0, -1000.0, 0.0)
    """value of a harmful action (panic selling) after an anxious click"""
    unsubscribe: float = num(-2.0, -1000.0, 0.0)
    """value of an unsubscribe from a channel"""
    complaint: float = num(-4.0, -1000.0, 0.0)
    """value of a complaint"""
    churn: float = num(-25.0, -10000.0, 0.0)
    """value of losing the client (an account closure)"""
    message: float = num(-0.05, -100.0, 0.0)
    """cost of each delivered message"""
    violation: float = num(-0.2, -100.0, 0.0)
    """cost of asking for a send the guardrails blocked"""
    observable: bool = False
    """weigh only what a firm sees (:data:`OBSERVABLE_OUTCOMES`): ``calm_click`` and
    ``anxious_click`` must then be 0 and ``click`` values every click"""

    def check(self, prefix: str) -> None:
        """Refuse an observable reward that weighs a latent outcome."""
        if not self.observable:
            return
        for name in LATENT_OUTCOMES:
            weight = getattr(self, name)
            if weight != 0.0:
                raise ConfigError(
                    f"{prefix}.{name} must be 0 in an observable reward (a firm cannot tell a "
                    f"calm click from an anxious one; value clicks with {prefix}.click), "
                    f"got {weight}"
                )

    def weights(self) -> dict[str, float]:
        """Outcome name -> weight, for the outcome arrays the env produces.

        An observable reward names only :data:`OBSERVABLE_OUTCOMES`; the latent presets name
        ``clicked`` only where ``click`` is not 0 (so their weights are those they always were).
        """
        if self.observable:
            self.check("reward")
            return {
                "clicked": self.click,
                "converted": self.conversion,
                "harmful": self.harmful,
                "unsubscribed": self.unsubscribe,
                "complaint": self.complaint,
                "churned": self.churn,
                "sent": self.message,
                "violation": self.violation,
            }
        weights = {
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
        if self.click:
            weights["clicked"] = self.click
        return weights


COSTS: dict[str, str] = {"cost_churn": "churned", "cost_anxiety": "anxious_click"}
"""the constrained agent's costs and the outcome each one counts"""


def reward(outcomes: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """(N,) float64 reward: ``sum(weight * outcome)`` over the named outcome arrays (per client-day,
    or per client over any period when ``outcomes`` hold counts summed over it)."""
    n = len(next(iter(outcomes.values())))
    total = np.zeros(n)
    for name, weight in weights.items():
        if weight:
            total += weight * outcomes[name]
    return total


def observable_outcomes(outcomes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outcome arrays a firm sees (:data:`OBSERVABLE_OUTCOMES` present in ``outcomes``);
    every latent array is left behind."""
    return {name: outcomes[name] for name in OBSERVABLE_OUTCOMES if name in outcomes}


def observable_value(outcomes: Mapping[str, np.ndarray], config: RewardConfig) -> np.ndarray:
    """(N,) float64 value of an observable reward, computed from the observable outcomes alone
    (per client-day, or per client over a period for summed counts).

    Raises ``ValueError`` for a latent reward and ``KeyError`` naming an observable outcome
    ``outcomes`` lack; the value is the same as :func:`reward` with ``config.weights()``.
    """
    if not config.observable:
        raise ValueError(
            f"reward {config.name!r} weighs latent outcomes {list(LATENT_OUTCOMES)}; "
            "observable_value needs an observable reward (reward.observable=true)"
        )
    seen = observable_outcomes(outcomes)
    weights = config.weights()
    missing = [name for name, weight in weights.items() if weight and name not in seen]
    if missing:
        raise KeyError(f"observable outcomes {missing} are missing; got {sorted(seen)}")
    return reward(seen, weights)


def costs(outcomes: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The constrained agent's per-client costs (float32 counts): churn and anxious clicks."""
    return {cost: outcomes[name].astype(np.float32) for cost, name in COSTS.items()}

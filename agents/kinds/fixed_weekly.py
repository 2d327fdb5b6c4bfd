"""The weekly digest: a heuristic kind defined and registered by this module alone (with
``conf/agent/fixed_weekly.yaml``), as any new heuristic is."""

from __future__ import annotations

import numpy as np

from agents.base import Policy
from agents.heuristics import CONTENT, SLOT, TONE, with_channel_fallback
from agents.kinds import heuristic
from envs.features import I_WEEKDAY


@heuristic
class FixedWeekly(Policy):
    """A weekly digest: Monday morning, informative portfolio summary by email."""

    name = "fixed_weekly"

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        send = obs[:, I_WEEKDAY + 0] > 0.5
        return with_channel_fallback(
            SLOT["morning"], TONE["informative"], CONTENT["portfolio_summary"], send, masks
        )

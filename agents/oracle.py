"""The privileged oracle: reads latent state and true parameters. The upper reference, never exported.

For every client and every allowed action it computes, from the world's own response
probabilities, the expected balanced reward of today's message plus a lookahead: how the
message moves fatigue, trust and anxiety, and so the churn hazard over the next
``lookahead_days``, valued at ``churn_value`` per client lost; fatigue is charged for as long
as it lasts. It picks the action with the best total (no-send scores 0). Conversions are counted
incrementally: a click replaces the organic visit the client might have made that day.
"""

from __future__ import annotations

import numpy as np

from agents.base import Policy
from agents.config import AgentConfig
from envs.config import RewardConfig
from envs.core import CadenceCore
from envs.spaces import JOINT_ACTIONS
from simulate.dynamics import anxiety_after_message, churn_hazard, trust_change
from simulate.labels import N_SLOTS

CANDIDATE_BLOCK = 1 << 14
"""allowed sends valued together: blocks of clients this size keep every temporary array in the
CPU's cache (the values do not depend on it)"""


def candidate_blocks(masks: np.ndarray, size: int = CANDIDATE_BLOCK) -> list[tuple[int, int]]:
    """Consecutive row ranges ``[lo, hi)`` of ``masks`` (N, 361) with about ``size`` allowed
    sends (index 1 on) each, a client never split; covers every row that has one."""
    counts = np.cumsum(masks[:, 1:].sum(axis=1))
    total = int(counts[-1]) if len(counts) else 0
    if total == 0:
        return []
    cuts = np.searchsorted(counts, np.arange(size, total, size), side="left") + 1
    edges = np.unique(np.concatenate([[0], cuts, [len(counts)]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=False)]


class Oracle(Policy):
    """Needs the env core it acts in: call :meth:`bind` before :meth:`act` (evaluation does)."""

    name = "oracle"
    privileged = True
    """it reads every client's latent state and hidden traits in the world it acts in"""

    def __init__(self, cfg: AgentConfig | None = None) -> None:
        self.cfg = cfg or AgentConfig(name="oracle")
        self.core: CadenceCore | None = None
        self.weights = RewardConfig()  # the balanced objective, whatever the run trains on

    def bind(self, core: CadenceCore) -> None:
        """Give the oracle the world it may read."""
        self.core = core

    def agent_config(self) -> AgentConfig:
        return self.cfg

    def action_values(self, masks: np.ndarray) -> np.ndarray:
        """(N, 361) expected value of each action (no-send 0; masked actions -inf).

        Valued a block of clients at a time (:data:`CANDIDATE_BLOCK` allowed sends a block) and
        with each client's own quantities computed once: every value is the same as valuing all
        the candidates at once, only faster (the temporaries stay in the CPU's cache)."""
        if self.core is None:
            raise RuntimeError("the oracle reads the world: call oracle.bind(core) first")
        world, params = self.core.world, self.core.world.response
        day = self.core.day
        latent = world.latent
        masks = np.asarray(masks)
        # per client: the organic visit's conversion a click replaces, the churn hazard's slope
        # and whether one more message tips fatigue past tolerance
        organic = world.visit_probability(day) * world.visit_convert_probability(day, world.rows)
        hazard = churn_hazard(params, latent.trust, latent.anxiety, latent.fatigue)
        slope = hazard * (1.0 - hazard)
        over = (latent.fatigue + 1.0 > params.fatigue_tolerance).astype(float)
        out = np.full((world.n, masks.shape[1]), -np.inf)
        out[:, 0] = 0.0
        for lo, hi in candidate_blocks(masks):
            rows, cols = np.nonzero(masks[lo:hi, 1:])
            rows += lo
            cols += 1
            out[rows, cols] = self._send_values(day, rows, cols, organic, slope, over)
        return out

    def _send_values(
        self,
        day: int,
        rows_n: np.ndarray,
        cols: np.ndarray,
        organic: np.ndarray,
        slope: np.ndarray,
        over: np.ndarray,
    ) -> np.ndarray:
        """(M,) value of sending the joint action ``cols[i]`` to client ``rows_n[i]`` today, from
        the per-client ``organic`` conversion, churn hazard ``slope`` and fatigue ``over`` (N,)."""
        world, cfg, weights = self.core.world, self.cfg, self.weights
        params, latent, traits = world.response, world.latent, world.traits
        actions = JOINT_ACTIONS[cols]  # (M, 4) slot, tone, channel, content of each allowed send
        pr = world.response_probabilities(
            day, rows_n, actions[:, 0] - 1, actions[:, 1], actions[:, 2], actions[:, 3]
        )
        p_open, calm, anx = pr["open"], pr["calm_click"], pr["anxious_click"]
        p_calm = p_open * calm
        p_anx = p_open * (1.0 - calm) * anx
        # a click is the day's visit: it takes the place of the organic visit (and its chance
        # to convert) the client might have made anyway, so only the difference is the message's
        p_convert = (
            p_calm * pr["calm_convert"]
            + p_anx * params.anxious_convert
            - (p_calm + p_anx) * organic.take(rows_n)
        )
        p_harm = p_anx * pr["harm"]
        today = (
            weights.calm_click * p_calm
            + weights.anxious_click * p_anx
            + weights.conversion * p_convert
            + weights.harmful * p_harm
            + weights.unsubscribe * pr["unsubscribe"]
            + weights.complaint * pr["complaint"]
            + weights.message
        )
        # lookahead: change of the daily churn logit, by day, caused by this message
        urgency, relevance = pr["urgency"], pr["relevance"]
        fx = world.schedule.effects(day)
        segment = traits.segment.take(rows_n)
        d_trust = trust_change(
            params,
            relevance,
            urgency,
            actions[:, 0] == N_SLOTS,
            p_convert,
            p_harm,
            fx.send_trust[segment, actions[:, 3]],
        )
        anxiety = latent.anxiety.take(rows_n)
        d_anxiety = (
            anxiety_after_message(
                params,
                anxiety,
                traits.susceptibility.take(rows_n),
                urgency,
                np.asarray(params.tone_relief)[actions[:, 1]],
            )
            - anxiety
        )
        f_decay = 0.5 ** (1.0 / params.fatigue_half_life_days)
        a_decay = 0.5 ** (1.0 / params.anxiety_half_life_days)
        days = np.arange(1, cfg.lookahead_days + 1)
        fatigue_days = (f_decay**days).sum()
        anxiety_days = (a_decay**days).sum()
        extra_churn = slope.take(rows_n) * (
            -params.churn_trust * d_trust * cfg.lookahead_days
            + params.churn_anxiety * d_anxiety * anxiety_days
            + params.churn_fatigue * over.take(rows_n) * fatigue_days
        )
        return today - cfg.churn_value * extra_churn - cfg.fatigue_cost * fatigue_days

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return JOINT_ACTIONS[self.action_values(masks).argmax(axis=1)]

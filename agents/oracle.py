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
from simulate.labels import N_CONTENTS, N_SLOTS, N_TONES
from simulate.world import World

CANDIDATE_BLOCK = 1 << 14
"""allowed sends valued together: blocks of clients this size keep every temporary array in the
CPU's cache (the values do not depend on it)"""


def candidate_blocks(masks: np.ndarray, size: int = CANDIDATE_BLOCK) -> list[tuple[int, int]]:
    """Consecutive row ranges ``[lo, hi)`` of ``masks`` (N, 361) with about ``size`` allowed
    sends (index 1 on) each, a client never split; covers every row that has one."""
    if size < 1:
        raise ValueError(f"candidate_blocks: size must be at least 1 allowed send, got {size}")
    counts = np.cumsum(masks[:, 1:].sum(axis=1))
    total = int(counts[-1]) if len(counts) else 0
    if total == 0:
        return []
    cuts = np.searchsorted(counts, np.arange(size, total, size), side="left") + 1
    edges = np.unique(np.concatenate([[0], cuts, [len(counts)]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True)]


_SLOT_IX, _TONE, _CHANNEL, _CONTENT = (np.ascontiguousarray(c) for c in JOINT_ACTIONS.T)
_SLOT_IX = _SLOT_IX - 1
"""each joint action's send slot (0..5; -1 for no-send), tone, channel and content"""
_LATE = JOINT_ACTIONS[:, 0] == N_SLOTS
"""each joint action sends in the last slot"""


class Oracle(Policy):
    """Needs the env core it acts in: call :meth:`bind` before :meth:`act` (evaluation does)."""

    name = "oracle"
    privileged = True
    """it reads every client's latent state and hidden traits in the world it acts in"""

    def __init__(self, cfg: AgentConfig | None = None) -> None:
        self.cfg = cfg or AgentConfig(name="oracle")
        self.core: CadenceCore | None = None
        self.weights = RewardConfig()  # the balanced objective, whatever the run trains on
        self.block = CANDIDATE_BLOCK
        """allowed sends valued together (:func:`candidate_blocks`); the values do not depend
        on it, only the speed"""

    def bind(self, core: CadenceCore) -> None:
        """Give the oracle the world it may read."""
        self.core = core

    def agent_config(self) -> AgentConfig:
        return self.cfg

    def action_values(self, masks: np.ndarray) -> np.ndarray:
        """(N, 361) expected value of each action (no-send 0; masked actions -inf).

        Each client's own quantities (and each client-tone pair's) are computed once a day, and
        the candidate sends are valued a block of clients at a time (about :attr:`block` sends
        a block): every value is the same, bit for bit, as valuing all candidates at once
        with the per-candidate formulas, only faster (the temporaries stay in the CPU's cache)."""
        if self.core is None:
            raise RuntimeError("the oracle reads the world: call oracle.bind(core) first")
        world, day = self.core.world, self.core.day
        masks = np.asarray(masks)
        terms = self._client_terms(world, day)
        width = masks.shape[1]
        out = np.full((world.n, width), -np.inf)
        out[:, 0] = 0.0
        flat = out.reshape(-1)
        for lo, hi in candidate_blocks(masks, self.block):
            rows, cols = np.nonzero(masks[lo:hi, 1:])
            rows += lo
            cols += 1
            flat[rows * width + cols] = self._send_values(world, day, rows, cols, terms)
        return out

    def _client_terms(self, world: World, day: int) -> dict[str, np.ndarray]:
        """What the value of a send takes from its client alone (or its client and tone), (N,)
        arrays: ``organic`` (the organic visit's conversion a click replaces), ``slope`` (of the
        churn hazard), ``fatigue`` (the churn logit's fatigue lookahead), and (N, tones)
        ``anxiety`` (the churn logit's anxiety lookahead of a message in each tone)."""
        cfg, params, latent, traits = self.cfg, world.response, world.latent, world.traits
        organic = world.visit_probability(day) * world.visit_convert_probability(day, world.rows)
        hazard = churn_hazard(params, latent.trust, latent.anxiety, latent.fatigue)
        days = np.arange(1, cfg.lookahead_days + 1)
        fatigue_days = ((0.5 ** (1.0 / params.fatigue_half_life_days)) ** days).sum()
        anxiety_days = ((0.5 ** (1.0 / params.anxiety_half_life_days)) ** days).sum()
        over = (latent.fatigue + 1.0 > params.fatigue_tolerance).astype(float)
        anxiety = latent.anxiety[:, None]
        d_anxiety = (
            anxiety_after_message(
                params,
                anxiety,
                traits.susceptibility[:, None],
                np.asarray(params.tone_urgency, dtype=np.float64)[None, :],
                np.asarray(params.tone_relief, dtype=np.float64)[None, :],
            )
            - anxiety
        )
        return {
            "organic": organic,
            "slope": hazard * (1.0 - hazard),
            "fatigue": params.churn_fatigue * over * fatigue_days,
            "anxiety": np.ascontiguousarray(params.churn_anxiety * d_anxiety * anxiety_days),
            "fatigue_cost": cfg.fatigue_cost * fatigue_days,
        }

    def _send_values(
        self,
        world: World,
        day: int,
        rows: np.ndarray,
        cols: np.ndarray,
        terms: dict[str, np.ndarray],
    ) -> np.ndarray:
        """(M,) value of sending the joint action ``cols[i]`` to client ``rows[i]`` today, with
        the per-client ``terms`` of :meth:`_client_terms`."""
        cfg, weights = self.cfg, self.weights
        params, traits = world.response, world.traits
        tone, content = _TONE.take(cols), _CONTENT.take(cols)
        pr = world.response_probabilities(
            day, rows, _SLOT_IX.take(cols), tone, _CHANNEL.take(cols), content
        )
        p_open = pr["open"]
        p_calm = p_open * pr["calm_click"]
        p_anx = 1.0 - pr["calm_click"]
        p_anx *= p_open
        p_anx *= pr["anxious_click"]
        # a click is the day's visit: it takes the place of the organic visit (and its chance
        # to convert) the client might have made anyway, so only the difference is the message's
        p_convert = p_calm * pr["calm_convert"]
        p_convert += p_anx * params.anxious_convert
        replaced = p_calm + p_anx
        replaced *= terms["organic"].take(rows)
        p_convert -= replaced
        p_harm = p_anx * pr["harm"]
        value = weights.calm_click * p_calm
        value += weights.anxious_click * p_anx
        value += weights.conversion * p_convert
        value += weights.harmful * p_harm
        value += weights.unsubscribe * pr["unsubscribe"]
        value += weights.complaint * pr["complaint"]
        value += weights.message
        # lookahead: change of the daily churn logit, by day, caused by this message
        send_trust = np.ravel(world.schedule.effects(day).send_trust)
        churn = trust_change(
            params,
            pr["relevance"],
            pr["urgency"],
            _LATE.take(cols),
            p_convert,
            p_harm,
            send_trust.take(traits.segment.take(rows) * N_CONTENTS + content),
        )
        churn *= -params.churn_trust
        churn *= cfg.lookahead_days
        churn += terms["anxiety"].reshape(-1).take(rows * N_TONES + tone)
        churn += terms["fatigue"].take(rows)
        churn *= terms["slope"].take(rows)
        churn *= cfg.churn_value
        value -= churn
        value -= terms["fatigue_cost"]
        return value

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return JOINT_ACTIONS[self.action_values(masks).argmax(axis=1)]

"""The policies firms run today; each acts within the masks (a blocked wish becomes a fallback or no-send)."""

from __future__ import annotations

import numpy as np

from agents.base import Policy, factor_masks, first_allowed, flat
from agents.kinds import PolicyClasses
from envs.features import I_GOAL, I_RISK, I_WEEKDAY
from envs.spaces import JOINT_ACTIONS
from simulate.labels import CHANNELS, CONTENTS, N_CHANNELS, N_SEGMENTS, SLOT_KEYS, TONES

EMAIL, PUSH, SMS = (CHANNELS.index(c) for c in ("email", "push", "sms"))
TONE = {t: i for i, t in enumerate(TONES)}
CONTENT = {k: i for i, k in enumerate(CONTENTS)}
SLOT = {s: i + 1 for i, s in enumerate(SLOT_KEYS)}  # action slot numbers (0 is no-send)


def with_channel_fallback(
    slot, tone, content, send: np.ndarray, masks: np.ndarray, channels=(EMAIL, PUSH, SMS)
) -> np.ndarray:
    """(N, 4) actions: the wanted (slot, tone, content) on the first channel of ``channels``
    the masks allow (no-send where none is), and no-send where ``send`` is False.

    ``slot`` (an action slot number, 1..6; 0 is no-send), ``tone`` and ``content`` (indices into
    the action space's labels) are scalars or (N,) arrays; ``send`` and ``masks`` are (N,) bool
    and (N, 361) bool. The heuristics and the circuit breaker's safe fallback choose this way."""
    candidates = np.stack(
        [flat(slot, tone, c, content) * np.ones(len(masks), dtype=np.int64) for c in channels],
        axis=1,
    )
    actions = first_allowed(candidates, masks)
    actions[~send] = 0
    return actions


def _nth_true(allowed: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Column of the ``rank``-th True in each row of ``allowed`` (0 where the row has none)."""
    return (np.cumsum(allowed, axis=1) > rank[:, None]).argmax(axis=1)


class NoSend(Policy):
    """Never messages anyone: the zero point of ``eval/normalized_value``."""

    name = "no_send"

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        return np.zeros((len(obs), 4), dtype=np.int64)


class RandomPolicy(Policy):
    """Uniform over the allowed flat actions (no-send included)."""

    stochastic = True
    """its actions are draws: off-policy estimation needs probabilities it does not give"""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        pairs, tones, contents, exact = factor_masks(masks)
        n = len(obs)
        counts = (pairs.sum(axis=(1, 2)) * tones.sum(axis=1) * contents.sum(axis=1)).astype(
            np.int64
        )
        pick = np.floor(self.rng.random(n) * (counts + 1)).astype(np.int64)  # 0 = no-send
        send = (pick > 0) & exact
        k = np.maximum(pick - 1, 0)
        n_tones, n_contents = tones.sum(axis=1), np.maximum(contents.sum(axis=1), 1)
        content_rank, rest = k % n_contents, k // n_contents
        tone_rank, pair_rank = rest % np.maximum(n_tones, 1), rest // np.maximum(n_tones, 1)
        pair = _nth_true(pairs.reshape(n, -1), pair_rank)
        actions = np.zeros((n, 4), dtype=np.int64)
        slot_ix, channel = np.divmod(pair, N_CHANNELS)
        chosen = np.stack(
            [1 + slot_ix, _nth_true(tones, tone_rank), channel, _nth_true(contents, content_rank)],
            axis=1,
        )
        actions[send] = chosen[send]
        slow = np.flatnonzero(~exact)  # a mask that is not a product: sample the joint table
        if slow.size:
            scores = self.rng.random((slow.size, masks.shape[1])) * masks[slow]
            actions[slow] = JOINT_ACTIONS[scores.argmax(axis=1)]
        return actions


class BatchAndBlast(Policy):
    """Every day, morning, urgent product offer by push (email if push is blocked)."""

    name = "batch_and_blast"

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        send = np.ones(len(obs), dtype=bool)
        return with_channel_fallback(
            SLOT["morning"],
            TONE["urgent"],
            CONTENT["product_offer"],
            send,
            masks,
            channels=(PUSH, EMAIL, SMS),
        )


class SegmentRules(Policy):
    """A traditional segmented campaign: twice a week (Tuesday, Friday), slot, tone and content
    by declared goal; risk-seeking clients get opportunity tone. Clients who share no goal
    (consent tier 0) get the generic Tuesday digest."""

    name = "segment_rules"
    # per goal segment: (slot, tone, content)
    PLAYBOOK = np.array(
        [
            (SLOT["morning"], TONE["educational"], CONTENT["portfolio_summary"]),  # retirement
            (SLOT["midday"], TONE["informative"], CONTENT["market_update"]),  # growth investor
            (SLOT["early"], TONE["opportunity"], CONTENT["market_update"]),  # active trader
            (SLOT["evening"], TONE["educational"], CONTENT["education"]),  # saver / debt
        ]
    )

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
        goal_onehot = obs[:, I_GOAL : I_GOAL + N_SEGMENTS]
        known = goal_onehot.max(axis=1) > 0.5
        plan = self.PLAYBOOK[goal_onehot.argmax(axis=1)].copy()
        plan[~known] = (SLOT["morning"], TONE["informative"], CONTENT["portfolio_summary"])
        bold = known & (obs[:, I_RISK] > 0.7)
        plan[bold, 1] = TONE["opportunity"]
        weekday = obs[:, I_WEEKDAY : I_WEEKDAY + 7].argmax(axis=1)
        send = np.where(known, (weekday == 1) | (weekday == 4), weekday == 1)
        return with_channel_fallback(plan[:, 0], plan[:, 1], plan[:, 2], send, masks)


HEURISTICS = PolicyClasses("heuristic")
"""heuristic policy classes by name: every heuristic kind in the agent registry
(:mod:`agents.kinds`), wherever its module defines it"""

"""Exploration's draws: the distribution the runtime draws from around a base action, and each
action's exact probability under it (the propensity the decision log records). Needs numpy only.

The setting (epsilon or a softmax temperature, and the seed) is :class:`serve.choice.Exploration`
with its random stream :class:`serve.choice.Explorer`; :class:`Draws` applies it to one export's
guards: it draws each client's action around a base action (the policy's best allowed one, or
the firm's in shadow mode) among the actions the guards allow, and says the exact probability of
any action. The distributions are held in factored form (:class:`Factored`: send or not, then
the (slot, channel) pair, the tone and the content), so the 361 joint actions are never built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from serve.choice import SCORE_CAP, Explorer
from serve.guards import Guards, Masks
from serve.response import same_actions


class Allowed(NamedTuple):
    """What the guards allow N clients, and the policy's masked softmax over it."""

    pair_ok: np.ndarray
    """(slots * channels, N) allowed (slot, channel) pairs (:func:`allowed_pairs`)"""
    content_ok: np.ndarray
    """(contents, N) allowed contents"""
    count: np.ndarray
    """(N,) allowed joint actions, no-send included (:func:`allowed_count`)"""
    dist: Factored
    """the masked softmax at the exploration's temperature (1 for epsilon and none)"""
    undefined: np.ndarray
    """(N,) rows where the policy gives no distribution (:func:`softmax`)"""


class Draws:
    """An exploration setting applied to one export's guards and action space."""

    def __init__(
        self,
        explorer: Explorer,
        guards: Guards,
        nvec: np.ndarray,
        open_slots: list[np.ndarray],
        has_open_slot: np.ndarray,
    ) -> None:
        """``open_slots``: the slots open to each channel (not its quiet hours), ascending;
        ``has_open_slot``: (channels,) whether a channel has any."""
        self.explorer = explorer
        self.guards = guards
        self.nvec = nvec
        self.open_slots = open_slots
        self.has_open_slot = has_open_slot
        self.open_count = np.array([len(rows) for rows in open_slots], dtype=np.int64)
        """(channels,) slots open to each channel"""
        pairs = guards.state_channels @ self.open_count  # open (slot, channel) pairs per state
        count = 1 + pairs * int(nvec[1]) * guards.state_contents.sum(axis=1)
        self.state_count = np.ascontiguousarray(count, dtype=np.int64)
        """(states,) allowed joint actions in each :attr:`~serve.guards.Masks.state`"""

    def deterministic(self, policy: np.ndarray | None = None) -> bool:
        """Whether :meth:`explore` returns the base action as is, with probability 1 (no
        exploration, and no policy share in play): it then needs no scores."""
        setting = self.explorer.setting
        return setting.kind == "none" and (policy is None or setting.policy_share == 0)

    def count(self, masks: Masks) -> np.ndarray:
        """(N,) int64 allowed joint actions, no-send included, from the rules' :class:`Masks`
        (:func:`allowed_count` without the (slots * channels, N) pairs): per channel open
        today, its open slots, times every tone, times the allowed contents; counted once per
        :attr:`~serve.guards.Masks.state` (:attr:`state_count`)."""
        return self.state_count.take(masks.state)

    def explore(
        self,
        x: np.ndarray,
        scores: np.ndarray | None,
        base: np.ndarray,
        policy: np.ndarray | None = None,
        masks: Masks | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(N, 4) actions drawn around the (N, 4) allowed ``base`` actions by the exploration
        setting, their exact (N,) probabilities (:meth:`probability_of`), the (N,) number of
        allowed actions, and (N,) True where the draw changed the action. ``scores``: the
        policy's (N, 19) scores (:func:`serve.choice.scores`) for features ``x``; ``policy``:
        in shadow mode, the policy's own (N, 4) allowed choice, which replaces the firm's
        ``base`` with probability ``policy_share`` before epsilon's draw. ``scores`` may be
        None where :meth:`deterministic`; ``masks``: the rules for ``x``
        (:meth:`serve.guards.Guards.masks`) where already computed."""
        n, setting = len(x), self.explorer.setting
        if self.deterministic(policy):  # the base action, as is: nothing is drawn
            return (
                base.copy(),
                np.ones(n),
                self.count(masks or self.guards.masks(x)),
                np.zeros(n, dtype=bool),
            )
        if scores is None:
            raise ValueError("exploration draws from the policy's scores: none were given")
        parts = self.allowed(x, scores, masks)
        start = base
        if policy is not None and setting.policy_share > 0:
            pick = (self.explorer.uniforms(1, n)[0] < setting.policy_share) & ~parts.undefined
            start = np.where(pick[:, None], policy, base)
        if setting.kind == "none":
            actions = start.copy()
        elif setting.kind == "softmax":
            drawn = parts.dist.sample(self.explorer.uniforms(4, n))
            actions = np.where(parts.undefined[:, None], base, drawn)
        else:
            tones, channels = int(self.nvec[1]), int(self.nvec[2])
            u = self.explorer.uniforms(5, n)
            drawn = uniform(parts.pair_ok, tones, parts.content_ok, channels).sample(u[1:])
            explore = (u[0] < float(setting.epsilon)) & ~parts.undefined
            actions = np.where(explore[:, None], drawn, start)
        if setting.kind == "none" and start is base:
            return actions, np.ones(n), parts.count, np.zeros(n, dtype=bool)
        propensity = self.probability_of(x, scores, base, actions, parts, policy)
        # a drawn action has probability > 0, but a product of four parts may underflow
        propensity = np.maximum(propensity, np.finfo(np.float64).tiny)
        return actions, propensity, parts.count, ~same_actions(actions, base)

    def probability_of(
        self,
        x: np.ndarray,
        scores: np.ndarray,
        base: np.ndarray,
        actions: np.ndarray,
        parts: Allowed | None = None,
        policy: np.ndarray | None = None,
    ) -> np.ndarray:
        """(N,) exact probability that :meth:`explore` returns each row's (N, 4) ``actions``
        around the (N, 4) allowed ``base`` actions (the policy's best, or the firm's), for
        features ``x`` (consent applied) and the policy's (N, 19) ``scores``; 0 for an action
        the guards do not allow.

        epsilon: ``(1 - eps) * [a = base] + eps / allowed``; softmax: the masked softmax of the
        policy's scores at the temperature (``base`` unused); none: ``[a = base]``. Rows the
        policy gives no distribution (a NaN score, or every allowed action of weight 0) keep
        ``base``: ``[a = base]``. With ``policy`` (shadow mode's policy choice) and a
        ``policy_share`` s, ``[a = base]`` reads ``(1 - s) [a = base] + s [a = policy]``."""
        setting = self.explorer.setting
        parts = parts or self.allowed(x, scores)
        same = same_actions(actions, base).astype(np.float64)
        if policy is not None and setting.policy_share > 0:
            s = float(setting.policy_share)
            mixed = (1.0 - s) * same + s * same_actions(actions, policy)
            same = np.where(parts.undefined, same, mixed)
        if setting.kind == "none":
            return same
        if setting.kind == "softmax":
            return np.where(parts.undefined, same, parts.dist.probability(actions))
        eps = float(setting.epsilon)
        share = self.guards.is_allowed(x, actions) / parts.count
        return np.where(parts.undefined, same, (1.0 - eps) * same + eps * share)

    def allowed(self, x: np.ndarray, scores: np.ndarray, masks: Masks | None = None) -> Allowed:
        """What the guards allow each row of ``x``, and the policy's masked softmax over it."""
        channel_ok, content_ok = self.guards.allowed_channels_contents(x, masks)
        channel_ok &= self.has_open_slot[:, None]
        pair_ok = allowed_pairs(channel_ok, self.open_slots, int(self.nvec[0]) - 1)
        count = allowed_count(pair_ok, int(self.nvec[1]), content_ok)
        z = np.ascontiguousarray(scores.T)  # (19, N)
        temperature = self.explorer.setting.temperature or 1.0
        dist, undefined = softmax(z, self.nvec, pair_ok, content_ok, float(temperature))
        return Allowed(pair_ok, content_ok, count, dist, undefined)


@dataclass
class Factored:
    """A distribution over the allowed actions of N clients in factored form: send or not, then
    (given a send) the (slot, channel) pair, the tone and the content, independently. One column
    per client; each part's column sums to 1, or is all 0 where no send is possible."""

    send: np.ndarray
    """(N,) probability of a send (1 minus that of no-send)"""
    pair: np.ndarray
    """(slots * channels, N), pair ``slot_index * channels + channel`` (slot_index = slot - 1)"""
    tone: np.ndarray
    """(tones, N)"""
    content: np.ndarray
    """(contents, N)"""
    channels: int
    """how many channels (to split a pair index)"""

    def probability(self, actions: np.ndarray) -> np.ndarray:
        """(N,) probability of each row's (N, 4) action; 0 for an action not allowed (whatever
        its tone, channel and content say, a no-send is one action)."""
        cols = np.arange(len(actions))
        slot, tone, channel, content = actions.T
        pair = np.maximum(slot - 1, 0) * self.channels + channel
        send = (
            self.send * self.pair[pair, cols] * self.tone[tone, cols] * self.content[content, cols]
        )
        return np.where(slot > 0, send, 1.0 - self.send)

    def sample(self, u: np.ndarray) -> np.ndarray:
        """(N, 4) actions drawn with (4, N) uniforms ``u`` in [0, 1), by inverse CDF (an entry
        of probability 0 is never drawn)."""
        send = u[0] < self.send
        pair = inverse_cdf(self.pair, u[1])
        actions = np.zeros((len(self.send), 4), dtype=np.int64)
        actions[:, 0] = np.where(send, 1 + pair // self.channels, 0)
        actions[:, 1] = np.where(send, inverse_cdf(self.tone, u[2]), 0)
        actions[:, 2] = np.where(send, pair % self.channels, 0)
        actions[:, 3] = np.where(send, inverse_cdf(self.content, u[3]), 0)
        return actions


def inverse_cdf(p: np.ndarray, u: np.ndarray) -> np.ndarray:
    """(N,) index drawn from each column of (m, N) probabilities ``p`` by uniforms ``u``: the
    first entry whose cumulative sum exceeds ``u`` times the column's total, never an entry of
    probability 0 (an all-0 column gives 0)."""
    cum = np.cumsum(p, axis=0)
    index = (cum <= (u * cum[-1])[None, :]).sum(axis=0)
    last = p.shape[0] - 1 - np.argmax(p[::-1] > 0, axis=0)  # the last positive entry
    return np.where(cum[-1] > 0, np.minimum(index, last), 0)


def allowed_pairs(channel_ok: np.ndarray, open_slots: list[np.ndarray], slots: int) -> np.ndarray:
    """(slots * channels, N) True where the (slot index, channel) pair is allowed: the channel
    is open today (``channel_ok`` (channels, N)) and the slot not in its quiet hours."""
    c, n = channel_ok.shape
    open_ = np.zeros((slots, c), dtype=bool)
    for k, rows in enumerate(open_slots):
        open_[rows, k] = True
    return (open_[:, :, None] & channel_ok[None, :, :]).reshape(slots * c, n)


def allowed_count(pair_ok: np.ndarray, tones: int, content_ok: np.ndarray) -> np.ndarray:
    """(N,) how many joint actions are allowed: no-send plus every allowed send."""
    return 1 + pair_ok.sum(axis=0) * tones * content_ok.sum(axis=0)


def uniform(pair_ok: np.ndarray, tones: int, content_ok: np.ndarray, channels: int) -> Factored:
    """The uniform distribution over the allowed actions, no-send included (each has
    probability 1 / :func:`allowed_count`)."""
    pairs, contents = pair_ok.sum(axis=0), content_ok.sum(axis=0)
    sends = pairs * tones * contents
    return Factored(
        send=sends / (1.0 + sends),
        pair=pair_ok / np.maximum(pairs, 1),
        tone=np.full((tones, pair_ok.shape[1]), 1.0 / tones),
        content=content_ok / np.maximum(contents, 1),
        channels=channels,
    )


def softmax(
    z: np.ndarray, nvec: np.ndarray, pair_ok: np.ndarray, content_ok: np.ndarray, temperature: float
) -> tuple[Factored, np.ndarray]:
    """The masked softmax at ``temperature`` of (19, N) scores ``z`` (:func:`scores`
    transposed: one column per client) over the allowed actions, and (N,) True where it is
    undefined (a NaN score, or every allowed action of weight 0): those columns are no-send with
    probability 1. +inf scores and scores that overflow when divided read as :data:`SCORE_CAP`."""
    s, t, c, _k = (int(v) for v in nvec)
    with np.errstate(over="ignore"):
        scaled = np.minimum(z / temperature, SCORE_CAP)
    slot, tone, channel = scaled[1:s], scaled[s : s + t], scaled[s + t : s + t + c]
    content = scaled[s + t + c :]
    n = z.shape[1]
    with np.errstate(invalid="ignore", over="ignore"):
        pair_score = (slot[:, None, :] + channel[None, :, :]).reshape(-1, n)
    pair_p, pair_lse = _normalized(np.where(pair_ok, np.minimum(pair_score, SCORE_CAP), -np.inf))
    tone_p, tone_lse = _normalized(tone)
    content_p, content_lse = _normalized(np.where(content_ok, content, -np.inf))
    with np.errstate(invalid="ignore", over="ignore"):
        sends = pair_lse + tone_lse + content_lse
        total = np.logaddexp(scaled[0], sends)
        send = np.exp(sends - total)
    undefined = np.isnan(z).any(axis=0) | ~(total > -np.inf) | np.isnan(send)
    send[undefined] = 0.0
    for part in (pair_p, tone_p, content_p):
        part[:, undefined] = 0.0
    return Factored(send, pair_p, tone_p, content_p, c), undefined


def _normalized(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each column of (m, N) log-weights (finite or -inf; NaN columns give NaN) as
    probabilities, all 0 where every weight is 0, and the column's log-sum-exp (-inf there)."""
    top = a.max(axis=0)
    empty = top == -np.inf
    safe = np.where(empty, 0.0, top)
    with np.errstate(invalid="ignore"):
        w = np.exp(a - safe)
    total = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = w / total
        lse = np.log(total) + safe
    p[:, empty] = 0.0
    lse[empty] = -np.inf
    return p, lse

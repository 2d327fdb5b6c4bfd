"""Action masks: opt-outs, quiet hours, frequency caps and consent.

The joint rules (a channel is quiet in some slots) are exact only over the 361 flat actions.
The per-component masks are the largest *product* set inside the joint allowed set, so any
combination of allowed components is itself allowed: a policy that samples each component
from its mask never asks for a blocked send.
Everything here is a function of arrays a firm holds (opt-outs, recent sends per channel,
consent tier), which are also observation features, so a server can rebuild the masks.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import numpy as np

from envs.config import GuardrailConfig
from envs.features import I_OPTED_OUT, I_SENT_7D, I_TIER
from envs.spaces import NVEC
from simulate.config import quiet_table
from simulate.labels import (
    CHANNELS,
    CONTENTS,
    N_CHANNELS,
    N_CONTENTS,
    N_JOINT_ACTIONS,
    N_SLOTS,
    N_TONES,
)

# Non-empty channel subsets, largest first: the tie-break when picking the product set.
_SUBSETS = np.array(
    sorted(
        (s for s in itertools.product([True, False], repeat=N_CHANNELS) if any(s)),
        key=lambda s: -sum(s),
    ),
    dtype=bool,
)


@dataclass(frozen=True)
class MaskRules:
    """Guardrails compiled to arrays."""

    quiet: np.ndarray
    """(slots, channels) True where sending is forbidden (quiet hours)"""
    max_per_week: int
    """most messages in any 7 days"""
    channel_cap: np.ndarray
    """(channels,) most messages per channel in any 7 days"""
    content_min_tier: np.ndarray
    """(contents,) lowest consent tier for each content"""

    @classmethod
    def from_config(cls, cfg: GuardrailConfig) -> MaskRules:
        cap = np.array([cfg.channel_caps.get(c, 7) for c in CHANNELS], dtype=np.int64)
        tier = np.array([cfg.content_min_tier.get(k, 0) for k in CONTENTS], dtype=np.int64)
        return cls(quiet_table(cfg.quiet_hours), int(cfg.max_per_week), cap, tier)


def mask_inputs(obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(opted_out (N,3) bool, sent per channel in 7 days (N,3) int, consent tier (N,) int) from observations."""
    opted_out = obs[:, I_OPTED_OUT : I_OPTED_OUT + N_CHANNELS] > 0.5
    counts = np.rint(obs[:, I_SENT_7D : I_SENT_7D + N_CHANNELS]).astype(np.int64)
    tier = np.argmax(obs[:, I_TIER : I_TIER + 4], axis=1)
    return opted_out, counts, tier


def channel_ok(rules: MaskRules, opted_out: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N, channels) True where a send on the channel is allowed in some slot's terms: not
    opted out, under the channel's cap and under the weekly cap (quiet hours aside)."""
    ok = ~opted_out & (counts < rules.channel_cap[None, :])
    ok &= (counts.sum(axis=1) < rules.max_per_week)[:, None]
    return ok


def slot_channel_allowed(rules: MaskRules, opted_out: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N, slots, channels) True where a send in that slot on that channel is allowed."""
    return channel_ok(rules, opted_out, counts)[:, None, :] & ~rules.quiet[None, :, :]


def content_allowed(rules: MaskRules, tier: np.ndarray) -> np.ndarray:
    """(N, contents) True where the client's consent tier allows the content."""
    return np.asarray(tier)[:, None] >= rules.content_min_tier[None, :]


def joint_mask_direct(
    rules: MaskRules, opted_out: np.ndarray, counts: np.ndarray, tier: np.ndarray
) -> np.ndarray:
    """:func:`joint_mask` computed row by row from the rules, without the per-state table (the
    table is made from it; tests hold the two equal)."""
    sc = slot_channel_allowed(rules, opted_out, counts)
    ct = content_allowed(rules, tier)
    n = sc.shape[0]
    # Few distinct (pairs, contents) patterns exist: build each once, then copy rows (fast).
    bits = np.concatenate([sc.reshape(n, -1), ct], axis=1)
    key = bits @ (np.int64(1) << np.arange(bits.shape[1], dtype=np.int64))
    unique, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    m = len(unique)
    table = np.ones((m, N_JOINT_ACTIONS), dtype=bool)
    sends = sc[first][:, :, None, :, None] & ct[first][:, None, None, None, :]
    table[:, 1:] = np.broadcast_to(sends, (m, N_SLOTS, N_TONES, N_CHANNELS, N_CONTENTS)).reshape(
        m, -1
    )
    return table[inverse.reshape(-1)]


def component_masks_direct(
    rules: MaskRules, opted_out: np.ndarray, counts: np.ndarray, tier: np.ndarray
) -> np.ndarray:
    """:func:`component_masks` computed row by row from the rules, without the per-state table
    (the table is made from it; tests hold the two equal)."""
    sc = slot_channel_allowed(rules, opted_out, counts)  # (N, S, C)
    ct = content_allowed(rules, tier)
    # slots usable with every channel of each subset: (N, subsets, S)
    usable = np.all(sc[:, None, :, :] | ~_SUBSETS[None, :, None, :], axis=3)
    size = usable.sum(axis=2) * _SUBSETS.sum(axis=1)[None, :]
    best = np.argmax(size, axis=1)
    rows = np.arange(sc.shape[0])
    can_send = (size[rows, best] > 0) & ct.any(axis=1)
    n = sc.shape[0]
    out = np.ones((n, int(NVEC.sum())), dtype=bool)
    s0, t0, c0, k0 = 0, int(NVEC[0]), int(NVEC[0] + NVEC[1]), int(NVEC[0] + NVEC[1] + NVEC[2])
    out[:, s0 + 1 : t0] = usable[rows, best] & can_send[:, None]
    out[:, c0:k0] = np.where(can_send[:, None], _SUBSETS[best], True)
    out[:, k0:] = np.where(can_send[:, None], ct, True)
    return out


_CHANNEL_BITS = np.int64(1) << np.arange(N_CHANNELS, dtype=np.int64)
"""weight of each channel's bit in a row's state"""
N_CHANNEL_STATES = 1 << N_CHANNELS
"""states of the open channels (one bit each)"""


@dataclass(frozen=True)
class StateTables:
    """Every mask as a function of a row's state: which channels are open (one bit each, the
    weekly cap included) and its consent tier, within the only tiers the rules tell apart.
    Made by the direct computations from every state, so a lookup gives what they give."""

    tier_low: int
    """tiers at or below it allow what it allows"""
    tier_high: int
    """tiers at or above it allow what it allows"""
    component: np.ndarray
    """(states, 19) :func:`component_masks_direct` of each state"""
    joint: np.ndarray
    """(states, 361) :func:`joint_mask_direct` of each state"""

    @classmethod
    def build(cls, rules: MaskRules) -> StateTables:
        low = min(int(rules.content_min_tier.min()), 0) - 1
        high = max(int(rules.content_min_tier.max()), 0)
        tiers = np.arange(low, high + 1, dtype=np.int64)
        bits = np.arange(N_CHANNEL_STATES, dtype=np.int64)
        open_ = (bits[:, None] & _CHANNEL_BITS[None, :]) > 0  # (8, channels)
        # open channels as inputs: opt-out where closed, no sends, a weekly cap that allows one
        opted_out = np.tile(~open_, (len(tiers), 1))  # state = (tier - low) x 8 + bits
        tier = np.repeat(tiers, N_CHANNEL_STATES)
        counts = np.zeros(opted_out.shape, dtype=np.int64)
        free = dataclasses.replace(
            rules, max_per_week=1, channel_cap=np.ones(N_CHANNELS, dtype=np.int64)
        )
        return cls(
            low,
            high,
            component_masks_direct(free, opted_out, counts, tier),
            joint_mask_direct(free, opted_out, counts, tier),
        )


def state_tables(rules: MaskRules) -> StateTables:
    """The :class:`StateTables` of ``rules``, made on first use and kept with them."""
    tables = rules.__dict__.get("_tables")
    if tables is None:
        tables = StateTables.build(rules)
        object.__setattr__(rules, "_tables", tables)
    return tables


def row_states(
    rules: MaskRules, opted_out: np.ndarray, counts: np.ndarray, tier: np.ndarray
) -> np.ndarray:
    """(N,) each row's index into its :class:`StateTables`."""
    tables = state_tables(rules)
    ok = channel_ok(rules, opted_out, counts)
    level = np.clip(np.asarray(tier), tables.tier_low, tables.tier_high).astype(np.int64)
    level -= tables.tier_low
    level *= N_CHANNEL_STATES
    level += ok @ _CHANNEL_BITS
    return level


def joint_mask(
    rules: MaskRules, opted_out: np.ndarray, counts: np.ndarray, tier: np.ndarray
) -> np.ndarray:
    """(N, 361) exact mask over the flat actions; index 0 (no-send) is always allowed."""
    return state_tables(rules).joint[row_states(rules, opted_out, counts, tier)]


def component_masks(
    rules: MaskRules, opted_out: np.ndarray, counts: np.ndarray, tier: np.ndarray
) -> np.ndarray:
    """(N, 19) concatenated per-component masks (slot incl. no-send, tone, channel, content).

    The allowed slots x channels form the largest product set inside the joint allowed set
    (ties go to more channels); every combination they allow is allowed. Read from the
    :class:`StateTables` (the same as :func:`component_masks_direct`).
    """
    return state_tables(rules).component[row_states(rules, opted_out, counts, tier)]


def is_allowed(
    rules: MaskRules,
    actions: np.ndarray,
    opted_out: np.ndarray,
    counts: np.ndarray,
    tier: np.ndarray,
) -> np.ndarray:
    """(N,) True where the MultiDiscrete action (N, 4) is allowed (no-send always is)."""
    slot, _tone, channel, content = (actions[:, i] for i in range(4))
    rows = np.arange(len(slot))
    slot_ix = np.maximum(slot - 1, 0)
    ok = ~opted_out[rows, channel] & (counts[rows, channel] < rules.channel_cap[channel])
    ok &= counts.sum(axis=1) < rules.max_per_week
    ok &= ~rules.quiet[slot_ix, channel]
    ok &= np.asarray(tier) >= rules.content_min_tier[content]
    return (slot == 0) | ok

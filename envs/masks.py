"""Action masks: opt-outs, quiet hours, frequency caps and consent.

The joint rules (a channel is quiet in some slots) are exact only over the 361 flat actions.
The per-component masks are the largest *product* set inside the joint allowed set, so any
combination of allowed components is itself allowed: a policy that samples each component
from its mask never asks for a blocked send.
Everything here is a function of arrays a firm holds (opt-outs, recent sends per channel,
consent tier), which are also observation features, so a server can rebuild the masks.
"""

from __future__ import annotations

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


def slot_channel_allowed(rules: MaskRules, opted_out: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(N, slots, channels) True where a send in that slot on that channel is allowed."""
    channel_ok = ~opted_out & (counts < rules.channel_cap[None, :])
    channel_ok &= (counts.sum(axis=1) < rules.max_per_week)[:, None]
    return channel_ok[:, None, :] & ~rules.quiet[None, :, :]


def content_allowed(rules: MaskRules, tier: np.ndarray) -> np.ndarray:
    """(N, contents) True where the client's consent tier allows the content."""
    return np.asarray(tier)[:, None] >= rules.content_min_tier[None, :]


def joint_mask(
    rules: MaskRules, opted_out: np.ndarray, counts: np.ndarray, tier: np.ndarray
) -> np.ndarray:
    """(N, 361) exact mask over the flat actions; index 0 (no-send) is always allowed."""
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


def component_masks(
    rules: MaskRules, opted_out: np.ndarray, counts: np.ndarray, tier: np.ndarray
) -> np.ndarray:
    """(N, 19) concatenated per-component masks (slot incl. no-send, tone, channel, content).

    The allowed slots x channels form the largest product set inside the joint allowed set
    (ties go to more channels); every combination they allow is allowed.
    """
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

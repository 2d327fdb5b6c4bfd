"""The one Policy protocol that evaluation and export see (design §4)."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from envs.spaces import JOINT_ACTIONS, multi_to_flat


@runtime_checkable
class Policy(Protocol):
    """Chooses one action per client for a batch.

    ``act(obs, masks)`` takes (N, OBS_DIM) float32 observations and (N, 361) bool joint masks
    (index 0, no-send, always allowed) and returns (N, 4) int64 MultiDiscrete actions
    ``(slot, tone, channel, content)`` that the masks allow. Online learners also implement
    ``update(obs, actions, rewards, info)``.
    """

    name: str

    def act(self, obs: np.ndarray, masks: np.ndarray) -> np.ndarray: ...


class Learner(Policy, Protocol):
    def update(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, info: dict[str, Any]) -> None: ...


def first_allowed(candidates: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(N, 4) actions: per row, the first of the (N, K) flat ``candidates`` the masks allow, else no-send."""
    rows = np.arange(len(masks))[:, None]
    ok = masks[rows, candidates]
    pick = np.where(ok.any(axis=1), candidates[np.arange(len(masks)), ok.argmax(axis=1)], 0)
    return JOINT_ACTIONS[pick]


def flat(slot, tone, channel, content) -> np.ndarray:
    """Flat indices of MultiDiscrete components (scalars or (N,) arrays broadcast together)."""
    parts = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in (slot, tone, channel, content)))
    return multi_to_flat(np.stack(parts, axis=-1).reshape(-1, 4)).reshape(parts[0].shape)


CHUNK = 16_384
"""rows per chunk when a policy scores all 361 actions (bounds memory at large N)"""


def in_chunks(act_rows, obs: np.ndarray, masks: np.ndarray, size: int = CHUNK) -> np.ndarray:
    """Apply ``act_rows(obs, masks) -> (n, 4)`` to row chunks and stack the results."""
    if len(obs) <= size:
        return act_rows(obs, masks)
    return np.concatenate([act_rows(obs[i:i + size], masks[i:i + size]) for i in range(0, len(obs), size)])

"""Action spaces: the MultiDiscrete action and its flat Discrete view (361 joint actions)."""

from __future__ import annotations

import numpy as np
from gymnasium import spaces

from simulate.labels import ACTION_NVEC, N_CHANNELS, N_CONTENTS, N_JOINT_ACTIONS, N_SLOTS, N_TONES

NVEC = np.asarray(ACTION_NVEC, dtype=np.int64)
"""(7, 5, 3, 4): no-send + slots, tones, channels, contents"""
MASK_SPLITS = np.cumsum(NVEC)[:-1]
"""where each component's mask starts inside the concatenated per-component mask (19 entries)"""


def multi_discrete_space() -> spaces.MultiDiscrete:
    """The action space ``MultiDiscrete([7, 5, 3, 4])``."""
    return spaces.MultiDiscrete(NVEC)


def flat_space() -> spaces.Discrete:
    """The flat view: ``Discrete(361)``; 0 is no-send."""
    return spaces.Discrete(N_JOINT_ACTIONS)


def _joint_table() -> np.ndarray:
    table = np.zeros((N_JOINT_ACTIONS, 4), dtype=np.int64)
    grid = np.stack(np.meshgrid(np.arange(1, N_SLOTS + 1), np.arange(N_TONES), np.arange(N_CHANNELS),
                                np.arange(N_CONTENTS), indexing="ij"), axis=-1).reshape(-1, 4)
    table[1:] = grid
    return table


JOINT_ACTIONS = _joint_table()
"""(361, 4): the MultiDiscrete action of each flat index (row 0 is no-send)"""


def flat_to_multi(flat: np.ndarray) -> np.ndarray:
    """(N,) flat indices -> (N, 4) MultiDiscrete actions."""
    return JOINT_ACTIONS[np.asarray(flat, dtype=np.int64)]


def multi_to_flat(actions: np.ndarray) -> np.ndarray:
    """(N, 4) MultiDiscrete actions -> (N,) flat indices; any action with slot 0 maps to 0."""
    a = np.asarray(actions, dtype=np.int64)
    index = 1 + (((a[:, 0] - 1) * N_TONES + a[:, 1]) * N_CHANNELS + a[:, 2]) * N_CONTENTS + a[:, 3]
    return np.where(a[:, 0] > 0, index, 0)

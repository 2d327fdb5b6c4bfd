"""Spaces of every env face: the MultiDiscrete action, its flat Discrete view (361 joint
actions), the observation box, the layout of the 19 per-component scores and masks, and the
one check every action passes before anything moves.

Layout of an action: ``(slot, tone, channel, content)``; slot 0 is no-send. Per-component
scores and masks concatenate the four components in that order: columns ``OFFSETS[i]`` to
``OFFSETS[i] + NVEC[i]`` belong to component ``i``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces

from envs.features import OBS_DIM, OBS_HIGH
from simulate.labels import (
    ACTION_LABELS,
    ACTION_NVEC,
    N_CHANNELS,
    N_CONTENTS,
    N_JOINT_ACTIONS,
    N_SLOTS,
    N_TONES,
)
from simulate.world import OUTCOMES

NVEC = np.asarray(ACTION_NVEC, dtype=np.int64)
"""(7, 5, 3, 4): no-send + slots, tones, channels, contents"""
COMPONENTS: tuple[str, ...] = tuple(ACTION_LABELS)
"""names of the action components, in action order: slot, tone, channel, content"""
OFFSETS = np.concatenate([[0], np.cumsum(NVEC)[:-1]]).astype(np.int64)
"""(0, 7, 12, 15): first column of each component in the concatenated 19 scores or masks"""
MASK_SPLITS = OFFSETS[1:]
"""where to ``np.split`` a concatenated (19,) mask or score vector into its components"""
N_SCORES = int(NVEC.sum())
"""19: length of the concatenated per-component scores or masks"""

INFO_KEYS: tuple[str, ...] = (*OUTCOMES, "violation", "cost_churn", "cost_anxiety")
"""per-client outcome names copied into each step's info, on every face"""


def multi_discrete_space() -> spaces.MultiDiscrete:
    """The action space ``MultiDiscrete([7, 5, 3, 4])``."""
    return spaces.MultiDiscrete(NVEC)


def flat_space() -> spaces.Discrete:
    """The flat view: ``Discrete(361)``; 0 is no-send."""
    return spaces.Discrete(N_JOINT_ACTIONS)


def observation_space() -> spaces.Box:
    """The observation space shared by every face: 41 float32 features, each in [0, high]."""
    return spaces.Box(
        low=np.zeros(OBS_DIM, dtype=np.float32), high=OBS_HIGH.copy(), dtype=np.float32
    )


def _joint_table() -> np.ndarray:
    table = np.zeros((N_JOINT_ACTIONS, 4), dtype=np.int64)
    grid = np.stack(
        np.meshgrid(
            np.arange(1, N_SLOTS + 1),
            np.arange(N_TONES),
            np.arange(N_CHANNELS),
            np.arange(N_CONTENTS),
            indexing="ij",
        ),
        axis=-1,
    ).reshape(-1, 4)
    table[1:] = grid
    return table


JOINT_ACTIONS = _joint_table()
"""(361, 4): the MultiDiscrete action of each flat index (row 0 is no-send)"""
JOINT_COLUMNS = JOINT_ACTIONS + OFFSETS[None, :]
"""(361, 4): the column of each flat action's four components among the 19 per-component scores"""


def flat_to_multi(flat: np.ndarray) -> np.ndarray:
    """(N,) flat indices -> (N, 4) MultiDiscrete actions (indices must be valid: see :func:`check_flat`)."""
    return JOINT_ACTIONS[np.asarray(flat, dtype=np.int64)]


def multi_to_flat(actions: np.ndarray) -> np.ndarray:
    """(N, 4) MultiDiscrete actions -> (N,) flat indices; any action with slot 0 maps to 0."""
    a = np.asarray(actions, dtype=np.int64)
    index = 1 + (((a[:, 0] - 1) * N_TONES + a[:, 1]) * N_CHANNELS + a[:, 2]) * N_CONTENTS + a[:, 3]
    return np.where(a[:, 0] > 0, index, 0)


class ActionError(ValueError):
    """An action outside the action space; nothing was simulated."""


def _integers(actions: Any, what: str) -> np.ndarray:
    """``actions`` as an int64 array; refuses non-numeric, non-finite and non-integer values."""
    try:
        array = np.asarray(actions)
    except (TypeError, ValueError) as exc:
        raise ActionError(
            f"{what} must be an integer array, got {type(actions).__name__}: {exc}"
        ) from exc
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise ActionError(f"{what} must hold integers, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            raise ActionError(
                f"{what} must hold whole numbers, got {array[where].item()!r} at index {where} "
                "(floats are not truncated)"
            )
        if np.abs(array).max(initial=0.0) > 2**62:
            raise ActionError(
                f"{what} holds a value too large for an action: {float(np.abs(array).max())!r}"
            )
    return array.astype(np.int64)


def check_actions(actions: Any, num_rows: int) -> np.ndarray:
    """Validate (num_rows, 4) MultiDiscrete actions and return them as int64.

    Shape must be exactly ``(num_rows, 4)`` (a transposed (4, N) array is refused), values
    integers (floats only when whole), each component within ``[0, NVEC[i])``. The error names
    the component, the value, the row and the allowed range. Raises :class:`ActionError`.
    """
    array = _integers(actions, "actions")
    if array.shape != (num_rows, len(NVEC)):
        raise ActionError(
            f"actions must have shape ({num_rows}, 4): one (slot, tone, channel, content) per client, "
            f"got shape {array.shape}"
        )
    low_ok = array >= 0
    high_ok = array < NVEC[None, :]
    if not (low_ok.all() and high_ok.all()):
        row, col = (int(i) for i in np.argwhere(~(low_ok & high_ok))[0])
        name = COMPONENTS[col]
        labels = ACTION_LABELS[name]
        raise ActionError(
            f"action component {name!r} of row {row} is {int(array[row, col])}; allowed range is "
            f"0..{int(NVEC[col]) - 1} ({', '.join(labels)})"
        )
    return array


def check_flat(actions: Any, num_rows: int) -> np.ndarray:
    """Validate (num_rows,) flat actions (``Discrete(361)``) and return them as int64.

    A single env may pass a scalar for ``num_rows == 1``. Raises :class:`ActionError`.
    """
    array = _integers(actions, "flat actions")
    if num_rows == 1 and array.shape in ((), (1,)):
        array = array.reshape(1)
    if array.shape != (num_rows,):
        raise ActionError(f"flat actions must have shape ({num_rows},), got shape {array.shape}")
    bad = (array < 0) | (array >= N_JOINT_ACTIONS)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ActionError(
            f"flat action of row {row} is {int(array[row])}; allowed range is 0..{N_JOINT_ACTIONS - 1}"
        )
    return array

"""A target policy's view of logged states: the action it would take at each and its
probability of the logged one (ε-soft where asked), the guardrail masks rebuilt from each row's
features as the serving runtime does.

A target must be readable from logged states alone: one that reads the world (``privileged``),
acts on its own memory (``history_dependent``) or draws at random (``stochastic``) is refused by
name (:func:`check_target`).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from agents.base import Policy
from envs.config import Setup
from envs.features import FEATURE_NAMES
from envs.masks import MaskRules, joint_mask, mask_inputs
from envs.spaces import multi_to_flat
from evaluation.logs import ACTIONS


def check_target(policy: Policy) -> None:
    """Refuse, by name, a target whose value logged states cannot give: one that reads the world
    (``privileged``), acts on its own memory (``history_dependent``) or draws (``stochastic``)."""
    if policy.privileged:
        raise ValueError(
            f"{policy.name} reads the world it acts in; it cannot be estimated from logs"
        )
    if policy.history_dependent:
        raise ValueError(
            f"{policy.name} acts on its own memory of past sends and days, which the logged "
            "states do not hold; it cannot be estimated from logs"
        )
    if policy.stochastic:
        raise ValueError(
            f"{policy.name} draws its actions at random; off-policy estimates need a target's "
            "probabilities, which it does not give (use a deterministic policy, softened with "
            "epsilon if need be)"
        )


def target_actions(policy: Policy, obs: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """(rows,) the flat action (0..360) a target ``policy`` takes at (rows, OBS_DIM) observations
    within (rows, 361) masks; a :class:`ValueError` naming it where it cannot be estimated from
    logs (privileged, history-dependent or stochastic)."""
    check_target(policy)
    return multi_to_flat(np.asarray(policy.act(obs, masks), dtype=np.int64))


def _probabilities(
    own: np.ndarray, logged: np.ndarray, masks: np.ndarray, epsilon: float
) -> np.ndarray:
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must lie in [0, 1], got {epsilon}")
    allowed = masks.sum(axis=1)
    uniform = masks[np.arange(len(logged)), logged] / allowed
    return (1.0 - epsilon) * (logged == own) + epsilon * uniform


def logged_inputs(frame: pl.DataFrame, setup: Setup) -> tuple[np.ndarray, np.ndarray]:
    """A log's (rows, OBS_DIM) float32 observations and (rows, 361) bool joint masks, the masks
    rebuilt from the features under ``setup``'s guardrails (as the serving runtime does)."""
    obs = frame.select(FEATURE_NAMES).to_numpy().astype(np.float32)
    return obs, joint_mask(MaskRules.from_config(setup.env.guardrails), *mask_inputs(obs))


def own_actions(policy: Policy, frame: pl.DataFrame, setup: Setup) -> np.ndarray:
    """The flat action ``policy`` takes at each logged state (masks rebuilt from the features)."""
    return target_actions(policy, *logged_inputs(frame, setup))


def target_pscores(
    policy: Policy,
    frame: pl.DataFrame,
    setup: Setup,
    epsilon: float = 0.0,
    own: np.ndarray | None = None,
) -> np.ndarray:
    """Probability of each logged action under ``policy`` (ε-soft where ``epsilon`` > 0);
    ``own``: the policy's actions at the logged states when already computed."""
    check_target(policy)
    obs, masks = logged_inputs(frame, setup)
    if own is None:
        own = target_actions(policy, obs, masks)
    logged = multi_to_flat(frame.select(ACTIONS).to_numpy().astype(np.int64))
    return _probabilities(own, logged, masks, epsilon)

"""The gymnasium face: a native ``VectorEnv``, the ``vector_entry_point`` of ``Cadence-v0``.

Autoreset is SAME_STEP: a finished slot's new client is observed in the same step, and the
finished client's last observation is in ``info["final_obs"]`` (``info["_final_obs"]`` marks which).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from envs.config import Setup, load_setup
from envs.core import CadenceCore, refuse_unknown
from envs.spaces import (
    INFO_KEYS,
    check_flat,
    flat_space,
    flat_to_multi,
    multi_discrete_space,
    observation_space,
)
from simulate.labels import ACTION_LABELS

OPTIONS = (
    "num_envs",
    "setup",
    "population",
    "scenario",
    "reward",
    "seed",
    "horizon_days",
    "action_view",
    "overrides",
    "client_id_offset",
)
"""keyword arguments of ``gymnasium.make_vec("Cadence-v0", ...)``"""


class CadenceVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` client slots as one batch.

    Args:
        num_envs: client slots.
        setup: configuration; if None it is composed from the preset names below.
        population, scenario, reward: preset names in ``conf/``.
        seed: default seed when ``reset`` gets none.
        horizon_days: days per client episode (overrides the preset).
        action_view: ``"multi"`` or ``"flat"``.
        overrides: dotted config overrides, e.g. ``["env.guardrails.max_per_week=3"]``.
        client_id_offset: added to every client id (fresh clients for evaluation).

    Any other keyword argument is a ``TypeError`` that names it (a misspelt ``scenaro=`` would
    otherwise run the default scenario).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(
        self,
        num_envs: int = 16,
        setup: Setup | None = None,
        population: str = "default",
        scenario: str = "calm",
        reward: str = "balanced",
        seed: int = 0,
        horizon_days: int | None = None,
        action_view: str = "multi",
        overrides: list[str] | tuple[str, ...] = (),
        client_id_offset: int = 0,
        **unknown: Any,
    ) -> None:
        refuse_unknown("Cadence-v0 (gymnasium.make_vec)", unknown, OPTIONS)
        if setup is None:
            extra = [f"env.horizon_days={horizon_days}"] if horizon_days is not None else []
            setup = load_setup(
                population=population,
                scenario=scenario,
                reward=reward,
                seed=seed,
                overrides=[*overrides, *extra],
            )
        if action_view not in ("multi", "flat"):
            raise ValueError(f"action_view must be 'multi' or 'flat', got {action_view!r}")
        self.setup = setup
        self.core = CadenceCore(setup, num_envs, autoreset=True, client_id_offset=client_id_offset)
        self.num_envs = self.core.n
        self.action_view = action_view
        self.single_observation_space = observation_space()
        self.single_action_space = flat_space() if action_view == "flat" else multi_discrete_space()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.action_labels = ACTION_LABELS
        """labels of each action component, in MultiDiscrete order"""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return self.core.reset(seed), {}

    def step(self, actions: np.ndarray):
        """One day for every slot; (N, 4) actions, or (N,) flat indices in the flat view.
        An action outside the space raises :class:`envs.spaces.ActionError` before anything moves."""
        if self.action_view == "flat":
            actions = flat_to_multi(check_flat(actions, self.num_envs))
        r = self.core.step(actions)
        info: dict[str, Any] = {k: r.outcomes[k] for k in INFO_KEYS}
        done = r.terminated | r.truncated
        if r.final_obs is not None:
            final = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                final[i] = r.final_obs[i]
            info["final_obs"] = final
            info["_final_obs"] = done
        return r.obs, r.reward, r.terminated, r.truncated, info

    def action_masks(self) -> np.ndarray:
        """(N, 19) per-component masks, or (N, 361) in the flat view."""
        return self.core.joint_masks() if self.action_view == "flat" else self.core.action_masks()

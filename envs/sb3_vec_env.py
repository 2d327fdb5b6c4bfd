"""The SB3 face: a ``VecEnv`` subclass over the batched core (SB3 rejects gymnasium's VectorEnv).

Each env index is one client slot. Finished slots are reset in the same step; their last
observation is in ``infos[i]["terminal_observation"]`` and ``infos[i]["TimeLimit.truncated"]``
says whether the horizon (not churn) ended them, as SB3's own vec envs do.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from stable_baselines3.common.vec_env.base_vec_env import VecEnv, VecEnvIndices, VecEnvStepReturn

from envs.config import Setup, load_setup
from envs.core import CadenceCore
from envs.spaces import (
    INFO_KEYS,
    check_flat,
    flat_space,
    flat_to_multi,
    multi_discrete_space,
    observation_space,
)


class CadenceVecEnv(VecEnv):
    """SB3 vectorised env: ``num_envs`` client slots simulated as one batch.

    Args:
        setup: configuration (defaults: embedded defaults, i.e. ``load_setup()``).
        num_envs: client slots (defaults to ``setup.env.num_clients``).
        action_view: ``"multi"`` for MultiDiscrete([7, 5, 3, 4]) or ``"flat"`` for Discrete(361).
        client_id_offset: added to client ids (fresh clients for evaluation).
    """

    def __init__(
        self,
        setup: Setup | None = None,
        num_envs: int | None = None,
        action_view: str = "multi",
        client_id_offset: int = 0,
    ) -> None:
        if action_view not in ("multi", "flat"):
            raise ValueError(f"action_view must be 'multi' or 'flat', got {action_view!r}")
        self.setup = setup if setup is not None else load_setup()
        self.core = CadenceCore(
            self.setup, num_envs, autoreset=True, client_id_offset=client_id_offset
        )
        self.action_view = action_view
        self.render_mode = None
        action_space = flat_space() if action_view == "flat" else multi_discrete_space()
        super().__init__(self.core.n, observation_space(), action_space)
        self._actions: np.ndarray | None = None
        self._start = time.time()

    def reset(self) -> np.ndarray:
        seed = self._seeds[0]
        obs = self.core.reset(seed)
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions)

    def step_wait(self) -> VecEnvStepReturn:
        """One day for every slot. An action outside the space raises
        :class:`envs.spaces.ActionError` before anything moves."""
        actions = self._actions
        if actions is None:
            raise RuntimeError("step_async(actions) must come before step_wait()")
        self._actions = None
        if self.action_view == "flat":
            actions = flat_to_multi(check_flat(actions, self.num_envs))
        r = self.core.step(actions)
        dones = r.terminated | r.truncated
        values = np.stack([r.outcomes[k] for k in INFO_KEYS], axis=1).tolist()
        infos: list[dict[str, Any]] = [dict(zip(INFO_KEYS, row, strict=True)) for row in values]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = r.final_obs[i]
            infos[i]["TimeLimit.truncated"] = bool(r.truncated[i])
            infos[i]["episode"] = {
                "r": float(r.episode_return[i]),
                "l": int(r.episode_length[i]),
                "t": round(time.time() - self._start, 6),
            }
        return r.obs, r.reward, dones, infos

    def action_masks(self) -> np.ndarray:
        """Masks for MaskablePPO: (N, 19) per-component, or (N, 361) in the flat view."""
        return self.core.joint_masks() if self.action_view == "flat" else self.core.action_masks()

    def close(self) -> None:
        return None

    def _indices(self, indices: VecEnvIndices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        if isinstance(indices, int):
            return [indices]
        return list(indices)

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        value = getattr(self, attr_name)
        return [value for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self, attr_name, value)

    def env_method(
        self,
        method_name: str,
        *method_args: Any,
        indices: VecEnvIndices = None,
        **method_kwargs: Any,
    ) -> list[Any]:
        rows = self._indices(indices)
        if method_name == "action_masks":
            return list(self.action_masks()[rows])
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result for _ in rows]

    def env_is_wrapped(self, wrapper_class: type, indices: VecEnvIndices = None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None for _ in range(self.num_envs)]

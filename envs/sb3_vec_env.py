"""The SB3 face: a ``VecEnv`` subclass over the batched core (SB3 rejects gymnasium's VectorEnv).

Each env index is one client slot. Finished slots are reset in the same step; their last
observation is in ``infos[i]["terminal_observation"]`` and ``infos[i]["TimeLimit.truncated"]``
says whether the horizon (not churn) ended them, as SB3's own vec envs do. The step's infos are
a :class:`StepInfos`: a sequence whose dicts are built when first read (a learner reads only the
finished slots'), with each outcome also readable as one array (:meth:`StepInfos.column`).
"""

from __future__ import annotations

import operator
import time
from collections.abc import Sequence
from typing import Any, overload

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


class StepInfos(Sequence[dict[str, Any]]):
    """One step's per-slot info dicts (``INFO_KEYS`` as Python numbers, as a list of dicts would
    hold them), each made when first read and then kept, so what a wrapper adds to one stays.

    Args:
        outcomes: each ``INFO_KEYS`` name's (N,) array for the step.
    """

    def __init__(self, outcomes: dict[str, np.ndarray]) -> None:
        self._columns = {k: np.asarray(outcomes[k]) for k in INFO_KEYS}
        self._dtype = np.result_type(*self._columns.values())
        self._n = len(self._columns[INFO_KEYS[0]])
        self._made: dict[int, dict[str, Any]] = {}
        self._table: np.ndarray | None = None

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> dict[str, Any]: ...

    @overload
    def __getitem__(self, i: slice) -> list[dict[str, Any]]: ...

    def __getitem__(self, i: int | slice) -> dict[str, Any] | list[dict[str, Any]]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._n))]
        j = operator.index(i)
        j = j + self._n if j < 0 else j
        if not 0 <= j < self._n:
            raise IndexError(f"slot {i} out of range for {self._n} slots")
        info = self._made.get(j)
        if info is None:
            if self._table is None:  # (keys, N) in the common dtype, made once for the step
                self._table = np.stack(list(self._columns.values())).astype(self._dtype, copy=False)
            info = dict(zip(self._columns, self._table[:, j].tolist(), strict=True))
            self._made[j] = info
        return info

    def column(self, key: str) -> np.ndarray:
        """(N,) values of ``key`` (one of ``INFO_KEYS``) for every slot, without the dicts."""
        return self._columns[key]


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
        infos = StepInfos(r.outcomes)
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

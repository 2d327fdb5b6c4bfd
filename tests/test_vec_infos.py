"""The SB3 face's per-step infos: built on demand (StepInfos) yet the same dicts a list would
hold, and the Lagrangian costs read from their columns equal to those read dict by dict."""

from __future__ import annotations

import numpy as np
from stable_baselines3.common.vec_env import VecEnvWrapper

from agents.sb3_agents import LagrangianCosts
from envs.config import load_setup
from envs.sb3_vec_env import CadenceVecEnv, StepInfos
from envs.spaces import INFO_KEYS


def _steps(env, days: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    nvec = env.action_space.nvec
    for _ in range(days):
        actions = np.stack([rng.integers(0, n, env.num_envs) for n in nvec], axis=1)
        actions[rng.random(env.num_envs) < 0.6, 0] = 0  # most days no send
        yield env.step(actions)


def test_step_infos_hold_what_a_list_of_dicts_held():
    env = CadenceVecEnv(load_setup(overrides=["env.horizon_days=5"]), num_envs=32)
    env.seed(1)
    env.reset()
    finished = 0
    for _, _, dones, infos in _steps(env, 7):
        assert isinstance(infos, StepInfos) and len(infos) == 32
        table = np.stack([infos.column(k) for k in INFO_KEYS], axis=1).tolist()
        expected = [dict(zip(INFO_KEYS, row, strict=True)) for row in table]
        got = [{k: info[k] for k in INFO_KEYS} for info in infos]
        assert got == expected
        assert [type(v) for v in got[0].values()] == [type(v) for v in expected[0].values()]
        assert infos[-1] is infos[31] and infos[0:2] == [infos[0], infos[1]]
        for i in np.flatnonzero(dones):
            finished += 1
            assert infos[i]["TimeLimit.truncated"] in (True, False)
            assert infos[i]["terminal_observation"].shape == env.observation_space.shape
            assert "episode" in infos[i]
        for i in np.flatnonzero(~dones):
            assert "terminal_observation" not in infos[i]
    assert finished >= 32  # a 5-day horizon ends every slot at least once in 7 days


class AsList(VecEnvWrapper):
    """Hands the infos on as a plain list of dicts (as other vec envs give them)."""

    def reset(self):
        return self.venv.reset()

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        return obs, rewards, dones, list(infos)


def test_lagrangian_costs_from_columns_equal_costs_from_dicts():
    runs = []
    for wrap in (False, True):
        base = CadenceVecEnv(load_setup(), num_envs=64)
        env = LagrangianCosts(AsList(base) if wrap else base)
        env.multipliers.update(churn=3.0, anxiety=0.7)
        env.seed(4)
        env.reset()
        runs.append([r for _, r, _, _ in _steps(env, 12, seed=5)])
    for a, b in zip(*runs, strict=True):
        assert a.dtype == b.dtype == np.float32
        np.testing.assert_array_equal(a, b)

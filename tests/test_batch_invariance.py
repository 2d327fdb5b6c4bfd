"""A client's trajectory does not depend on the batch it is simulated in."""

from __future__ import annotations

import numpy as np

from envs.config import load_setup
from envs.core import CadenceCore

K, BIG, DAYS = 24, 4096, 60


def _rollout(n: int, actions: np.ndarray):
    setup = load_setup(
        seed=3, overrides=["env.horizon_days=20"]
    )  # horizon < DAYS: slots get new clients
    core = CadenceCore(setup, n)
    obs = [core.reset()[:K].copy()]
    rewards, outcomes = [], []
    for day in range(DAYS):
        r = core.step(actions[day, :n])
        obs.append(r.obs[:K].copy())
        rewards.append(r.reward[:K].copy())
        outcomes.append({k: v[:K].copy() for k, v in r.outcomes.items()})
    return np.array(obs), np.array(rewards), outcomes, core.world.client_id[:K].copy()


def test_first_k_clients_identical_in_small_and_large_batch():
    policy = np.random.default_rng(0)
    actions = np.stack([policy.integers(0, k, (DAYS, BIG)) for k in (7, 5, 3, 4)], axis=2)
    small = _rollout(K, actions)
    large = _rollout(BIG, actions)
    np.testing.assert_array_equal(small[0], large[0])
    np.testing.assert_array_equal(small[1], large[1])
    for a, b in zip(small[2], large[2], strict=True):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    np.testing.assert_array_equal(small[3], large[3])
    assert (small[3] >= 2**32).all()  # every slot was refilled at least once (horizon 20 < 60 days)

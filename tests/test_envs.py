"""The three faces of Cadence-v0 over one implementation."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from envs.config import load_setup
from envs.consent import MIN_TIER
from envs.core import CadenceCore
from envs.features import FEATURE_NAMES, OBS_DIM
from envs.sb3_vec_env import CadenceVecEnv
from envs.spaces import INFO_KEYS, JOINT_ACTIONS, flat_to_multi, multi_to_flat
from simulate.labels import N_JOINT_ACTIONS


def test_gymnasium_and_sb3_checkers_pass():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        env = gym.make(envs.ENV_ID)
        gym_check_env(env.unwrapped)
        sb3_check_env(env.unwrapped)
        sb3_check_env(gym.make(envs.ENV_ID, action_view="flat").unwrapped)


@pytest.mark.parametrize("face", ["make", "make_vec"])
def test_action_labels_contract(face):
    if face == "make":
        env = gym.make(envs.ENV_ID)
    else:
        env = gym.make_vec(envs.ENV_ID, num_envs=2, vectorization_mode="vector_entry_point")
    labels = env.unwrapped.action_labels
    assert list(labels) == ["slot", "tone", "channel", "content"]
    assert labels["slot"] == (
        "no_send",
        "early 06-08",
        "morning 08-11",
        "midday 11-14",
        "afternoon 14-17",
        "evening 17-20",
        "late 20-23",
    )
    assert labels["tone"] == ("informative", "educational", "reassuring", "opportunity", "urgent")
    assert labels["channel"] == ("email", "push", "sms")
    assert labels["content"] == ("portfolio_summary", "education", "product_offer", "market_update")
    single = env.action_space if face == "make" else env.single_action_space
    assert tuple(single.nvec) == (7, 5, 3, 4)
    assert N_JOINT_ACTIONS == 361


def test_flat_view_round_trips():
    flat = np.arange(N_JOINT_ACTIONS)
    np.testing.assert_array_equal(multi_to_flat(flat_to_multi(flat)), flat)
    assert len({tuple(a) for a in JOINT_ACTIONS}) == N_JOINT_ACTIONS


def test_make_vec_vector_entry_point_and_info_arrays():
    venv = gym.make_vec(
        envs.ENV_ID, num_envs=32, vectorization_mode="vector_entry_point", horizon_days=5
    )
    obs, _ = venv.reset(seed=4)
    assert obs.shape == (32, OBS_DIM) and obs.dtype == np.float32
    saw_final = False
    for _ in range(6):
        obs, reward, terminated, truncated, info = venv.step(venv.action_space.sample())
        for key in (
            "sent",
            "opened",
            "clicked",
            "anxious_click",
            "converted",
            "unsubscribed",
            "complaint",
            "churned",
            "violation",
        ):
            assert info[key].shape == (32,)
        if "final_obs" in info:
            saw_final = True
            done = terminated | truncated
            np.testing.assert_array_equal(info["_final_obs"], done)
            assert all(info["final_obs"][i].shape == (OBS_DIM,) for i in np.flatnonzero(done))
    assert saw_final  # horizon 5 ended every episode
    assert venv.observation_space.contains(obs)


def test_sb3_vec_env_autoreset_semantics():
    venv = CadenceVecEnv(load_setup(overrides=["env.horizon_days=3"]), num_envs=8)
    venv.seed(1)
    venv.reset()
    for _day in range(3):
        obs, rewards, dones, infos = venv.step(np.zeros((8, 4), dtype=np.int64))
    assert dones.all()
    for info in infos:
        assert info["TimeLimit.truncated"] or info["churned"]
        assert info["terminal_observation"].shape == (OBS_DIM,)
        assert set(INFO_KEYS) <= set(info) and info["episode"]["l"] <= 3
    # the new clients start afresh: nothing sent in their last 7 days
    assert (obs[:, FEATURE_NAMES.index("sent_7d_email")] == 0).all()
    masks = np.stack(venv.env_method("action_masks"))
    assert masks.shape == (8, 19)


def test_masked_choice_becomes_no_send_and_counts_as_violation():
    core = CadenceCore(load_setup(), 64)
    core.reset()
    sms_late = np.tile([6, 0, 2, 0], (64, 1))  # SMS in the late slot: always quiet hours
    r = core.step(sms_late)
    assert r.outcomes["violation"].all() and not r.outcomes["sent"].any()
    email_midday = np.tile([3, 0, 0, 0], (64, 1))
    r = core.step(email_midday)
    assert not r.outcomes["violation"].any() and r.outcomes["sent"].all()


def test_observation_never_reveals_latent_state_or_protected_attributes():
    core = CadenceCore(load_setup(), 500)
    core.reset()
    for _ in range(5):
        core.step(np.tile([2, 0, 0, 1], (500, 1)))
    before = core.observe()
    w = core.world
    w.latent.trust[:] = np.random.default_rng(0).random(500)
    w.latent.anxiety[:] = 1.0
    w.latent.fatigue[:] = 9.0
    w.latent.novelty[:] = 0.0
    w.traits.gender[:] = (w.traits.gender + 1) % 3
    w.traits.age_band[:] = (w.traits.age_band + 1) % 4
    w.traits.susceptibility[:] = 0.99
    np.testing.assert_array_equal(core.observe(), before)


def test_consent_tier_gates_features():
    core = CadenceCore(load_setup(scenario="market_shock"), 2000)
    core.reset()
    for _ in range(35):
        core.step(np.tile([2, 0, 0, 1], (2000, 1)))
    obs = core.observe()
    tier = core.world.traits.consent_tier
    hidden = tier[:, None] < MIN_TIER[None, :]
    assert (obs[hidden] == 0).all()
    gated = MIN_TIER > 0
    assert gated.sum() >= 20
    # each gated feature carries information for the clients allowed to see it
    assert (np.abs(obs[tier == 3][:, gated]).sum(axis=0) > 0).all()


def test_reward_presets_change_the_reward_not_the_world():
    rewards = {}
    for preset in ("engagement", "balanced", "fiduciary"):
        core = CadenceCore(load_setup(reward=preset), 300)
        core.reset()
        r = core.step(np.tile([2, 4, 0, 3], (300, 1)))
        rewards[preset] = (r.reward, r.outcomes["clicked"])
    np.testing.assert_array_equal(rewards["engagement"][1], rewards["balanced"][1])
    np.testing.assert_allclose(rewards["engagement"][0], rewards["engagement"][1])
    assert not np.allclose(rewards["balanced"][0], rewards["engagement"][0])


def test_single_env_reset_seed_is_reproducible_and_reset_brings_next_client():
    env = gym.make(envs.ENV_ID)
    a, _ = env.reset(seed=9)
    b, _ = env.reset(seed=9)
    np.testing.assert_array_equal(a, b)
    ids = [env.unwrapped.core.world.client_id[0]]
    env.reset()
    ids.append(env.unwrapped.core.world.client_id[0])
    assert ids[0] != ids[1]


def test_bad_env_arguments_are_refused():
    with pytest.raises(ValueError, match="action_view"):
        CadenceVecEnv(num_envs=2, action_view="joint")
    with pytest.raises(ValueError, match="scenario='crash'"):
        gym.make(envs.ENV_ID, scenario="crash")
    with pytest.raises(ValueError, match="num_clients must be >= 1, got 0"):
        CadenceCore(load_setup(), 0)

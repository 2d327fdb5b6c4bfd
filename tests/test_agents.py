"""Every agent acts within masks, learners improve on their own start, and saved agents act the same."""

from __future__ import annotations

import numpy as np
import pytest

from agents.bandits import BANDIT_CLASSES
from agents.base import Policy
from agents.config import BANDITS, SB3_AGENTS, AgentConfig
from agents.heuristics import SegmentRules
from agents.oracle import Oracle
from agents.registry import load_policy, make_policy, save_policy, train_agent
from envs.config import load_setup
from envs.core import CadenceCore
from envs.spaces import multi_to_flat
from evaluation import evaluate, kpis

SETUP = load_setup(overrides=["env.horizon_days=60"])


def _acts_within_masks_and_reloads(policy: Policy, tmp_path, n: int = 300) -> None:
    core = CadenceCore(SETUP, n, client_id_offset=1 << 40)
    obs = core.reset(7)
    for _ in range(10):
        masks = core.joint_masks()
        actions = policy.act(obs, masks)
        assert masks[np.arange(n), multi_to_flat(actions)].all()
        obs = core.step(actions).obs
    again = load_policy(save_policy(policy, tmp_path / policy.name))
    masks = core.joint_masks()
    np.testing.assert_array_equal(again.act(obs, masks), policy.act(obs, masks))


def _value(policy: Policy, clients: int = 1500, days: int = 60) -> float:
    return kpis(evaluate([policy], SETUP, clients, days, seeds=(1000,), progress=False), n_boot=10)["eval/value"][0]


@pytest.mark.parametrize("name", BANDITS)
def test_bandit_learns_acts_within_masks_and_reloads(name, tmp_path):
    untrained = make_policy(AgentConfig(name=name), seed=0)
    untrained.deterministic = True
    start = _value(untrained)
    trained = train_agent(AgentConfig(name=name), SETUP, total_timesteps=40_000, num_envs=400, progress=False)
    assert _value(trained) > start + 1.0
    _acts_within_masks_and_reloads(trained, tmp_path)


@pytest.mark.parametrize("name", SB3_AGENTS)
def test_sb3_agent_acts_within_masks_and_reloads(name, tmp_path):
    cfg = AgentConfig(name=name, n_steps=8, batch_size=512, learning_starts=500, buffer_size=5_000)
    policy = train_agent(cfg, SETUP, total_timesteps=4_096, num_envs=64, progress=False)
    _acts_within_masks_and_reloads(policy, tmp_path)


@pytest.mark.slow
def test_ppo_improves_on_its_start():
    cfg = AgentConfig(name="ppo")
    start = _value(train_agent(cfg, SETUP, total_timesteps=256, num_envs=256, progress=False))
    trained = _value(train_agent(cfg, SETUP, total_timesteps=6_000_000, num_envs=256, progress=False))
    assert trained > start + 1.5, (start, trained)


def test_ppo_lagrangian_raises_multipliers_when_costs_exceed_limits():
    from agents.sb3_agents import LagrangeUpdate, LagrangianCosts, build_model, make_training_env

    cfg = AgentConfig(name="ppo_lagrangian", n_steps=16, churn_limit=0.0, anxiety_limit=0.0, multiplier_lr=1.0,
                      normalize_reward=False)
    env = make_training_env(cfg, load_setup(overrides=["env.horizon_days=10"]), 128)
    assert isinstance(env, LagrangianCosts)
    model = build_model(cfg, env)
    update = LagrangeUpdate(env, {"churn": 0.0, "anxiety": 0.0}, 1.0)
    model.learn(total_timesteps=128 * 16 * 3, callback=update)
    assert env.multipliers["anxiety"] > 0 and env.multipliers["churn"] > 0
    assert len(env.episode_costs["churn"]) >= 128  # every finished episode's cost was recorded


def test_lagrange_step_is_the_relative_violation():
    from stable_baselines3.common.logger import configure

    from agents.sb3_agents import LagrangeUpdate, build_model, make_training_env

    cfg = AgentConfig(name="ppo_lagrangian", n_steps=16)
    env = make_training_env(cfg, load_setup(overrides=["env.horizon_days=10"]), 8)
    model = build_model(cfg, env)
    model.set_logger(configure(None, []))
    update = LagrangeUpdate(env, {"churn": 0.02, "anxiety": 0.5}, 0.5)
    update.init_callback(model)
    env.episode_costs["churn"].extend([0.0, 0.1])  # mean 0.05: 1.5 times over its limit
    env.episode_costs["anxiety"].extend([0.25])  # half its limit: the multiplier stays at 0
    update.on_rollout_end()
    assert env.multipliers["churn"] == pytest.approx(0.5 * (0.05 - 0.02) / 0.02)
    assert env.multipliers["anxiety"] == 0.0
    env.episode_costs["churn"].extend([0.0] * 8)  # mean 0.01: half the limit, a step of -0.25
    update.on_rollout_end()
    assert env.multipliers["churn"] == pytest.approx(0.75 - 0.25)


def test_ppo_lagrangian_keeps_multipliers_at_zero_under_loose_limits():
    from agents.sb3_agents import LagrangeUpdate, build_model, make_training_env

    cfg = AgentConfig(name="ppo_lagrangian", n_steps=16, normalize_reward=False)
    env = make_training_env(cfg, load_setup(overrides=["env.horizon_days=10"]), 64)
    build_model(cfg, env).learn(total_timesteps=64 * 16 * 2,
                                callback=LagrangeUpdate(env, {"churn": 10.0, "anxiety": 100.0}, 1.0))
    assert env.multipliers == {"churn": 0.0, "anxiety": 0.0}


def test_oracle_beats_the_best_heuristic_and_needs_the_world():
    oracle = Oracle()
    with pytest.raises(RuntimeError, match="bind"):
        oracle.act(np.zeros((2, 41), np.float32), np.ones((2, 361), bool))
    assert _value(oracle, 1000) > _value(SegmentRules(), 1000) + 5.0


def test_load_policy_names_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="agent.json is missing"):
        load_policy(tmp_path)


def test_bandit_classes_cover_config_names():
    assert set(BANDIT_CLASSES) == set(BANDITS)

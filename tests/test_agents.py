"""Every agent acts within masks, learners improve on their own start, and saved agents act the same."""

from __future__ import annotations

import numpy as np
import pytest

from agents.bandits import BANDIT_CLASSES
from agents.base import Policy
from agents.config import BANDITS, SB3_AGENTS, AgentConfig
from agents.heuristics import SegmentRules
from agents.kinds import kind
from agents.oracle import Oracle
from agents.registry import load_policy, make_policy, save_policy, train_agent
from envs.config import load_setup
from envs.core import CadenceCore
from envs.spaces import multi_to_flat
from evaluation import evaluate, kpis
from simulate.config import ConfigError, validate

SETUP = load_setup(overrides=["env.horizon_days=60"])


def _slow_for(slow: set[str], names) -> list:
    """``names`` as parameters, those in ``slow`` marked slow (their training takes seconds
    each; ``make test`` runs every one)."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in slow else n for n in names]


# the bandits whose per-day update is the slowest (a context matrix per action)
HEAVY_BANDITS = {"linucb", "recovering", "thompson"}


def small(name: str, **values: object) -> AgentConfig:
    """The config of ``name`` with those of ``values`` it has (each kind has its own fields)."""
    return AgentConfig(name=name, **{k: v for k, v in values.items() if k in kind(name).fields})


def _acts_within_masks_and_reloads(policy: Policy, tmp_path, n: int = 300) -> None:
    core = CadenceCore(SETUP, n, client_id_offset=1 << 40)
    obs = core.reset(7)
    days = []
    for _ in range(10):
        masks = core.joint_masks()
        actions = policy.act(obs, masks)
        assert masks[np.arange(n), multi_to_flat(actions)].all()
        days.append((obs, masks))
        obs = core.step(actions).obs
    again = load_policy(save_policy(policy, tmp_path / policy.name))
    # a policy with memory (recurrent_ppo) decides from the days it has seen: both live the
    # same days again from a fresh start
    for p in (policy, again):
        if hasattr(p, "start_rollout"):
            p.start_rollout()
    for seen, allowed in days:
        np.testing.assert_array_equal(again.act(seen, allowed), policy.act(seen, allowed))


def _value(policy: Policy, clients: int = 1500, days: int = 60) -> float:
    return kpis(evaluate([policy], SETUP, clients, days, seeds=(1000,), progress=False), n_boot=10)[
        "eval/value"
    ][0]


# Tiny fixed problems with one right answer, to check that an update moves a learner's policy
# the right way. Learning *quality* (how good, how fast) is measured with seeds and CIs in
# studies/learning_check.py, not here.
_ONLY = [
    "reward.calm_click=0",
    "reward.anxious_click=0",
    "reward.conversion=0",
    "reward.harmful=0",
    "reward.unsubscribe=0",
    "reward.complaint=0",
    "reward.churn=0",
    "reward.violation=0",
    "env.horizon_days=20",
]
MESSAGES_COST = load_setup(overrides=[*_ONLY, "reward.message=-1"])
"""every delivered message costs 1 and nothing else counts: never sending is right"""
CLICKS_PAY = load_setup(
    overrides=[*_ONLY, "reward.calm_click=1", "reward.anxious_click=1", "reward.message=0"]
)
"""every click pays 1 and nothing else counts: sending is right"""


def _probe():
    core = CadenceCore(SETUP, 500, client_id_offset=1 << 40)
    obs = core.reset(3)
    return obs, core.joint_masks()


def _send_share(policy: Policy) -> float:
    obs, masks = _probe()
    return float((policy.act(obs, masks)[:, 0] > 0).mean())


@pytest.mark.parametrize("name", _slow_for(HEAVY_BANDITS, BANDITS))
def test_bandit_update_moves_its_policy_the_right_way(name):
    untrained = make_policy(AgentConfig(name=name), seed=0)
    untrained.deterministic = True
    assert _send_share(untrained) == 0.0  # no evidence yet: no send beats no-send
    paid = train_agent(
        AgentConfig(name=name), CLICKS_PAY, total_timesteps=4_000, num_envs=200, progress=False
    )
    charged = train_agent(
        AgentConfig(name=name), MESSAGES_COST, total_timesteps=4_000, num_envs=200, progress=False
    )
    paid.deterministic = charged.deterministic = True
    assert _send_share(paid) > 0.9  # measured: 1.0 for every bandit (after 20 days, as after 40)
    assert _send_share(charged) == 0.0


@pytest.mark.parametrize("name", _slow_for({"linucb", "recovering"}, BANDITS))
def test_bandit_acts_within_masks_and_reloads(name, tmp_path):
    trained = train_agent(
        AgentConfig(name=name), SETUP, total_timesteps=8_000, num_envs=400, progress=False
    )
    _acts_within_masks_and_reloads(trained, tmp_path)


@pytest.mark.parametrize("name", ["linucb", "recovering"])
def test_linucb_scores_are_the_ridge_mean_plus_alpha_standard_deviations(name, tmp_path):
    """After training, the posterior mean is the ridge solution and each (client, action)
    exploration bonus is alpha times the predictive standard deviation sqrt(phi' P^-1 phi) of
    that pair's features under the precision P, before and after a save and load."""
    from agents.bandits import ACTION_FEATURES, N_ACTION_FEATURES, N_CONTEXT, client_context

    trained = train_agent(
        AgentConfig(name=name), SETUP, total_timesteps=2_000, num_envs=100, progress=False
    )
    obs, _ = _probe()
    obs = obs[:5]
    np.testing.assert_allclose(
        trained.theta, np.linalg.solve(trained.precision, trained.target), rtol=1e-8, atol=1e-12
    )
    d = N_CONTEXT * N_ACTION_FEATURES
    cov = np.linalg.inv(trained.precision)[:d, :d]
    phi = np.einsum("np,aq->napq", client_context(obs), ACTION_FEATURES).reshape(len(obs), -1, d)
    direct = np.einsum("nad,de,nae->na", phi, cov, phi)
    reloaded = load_policy(save_policy(trained, tmp_path / name))
    for policy in (trained, reloaded):
        np.testing.assert_allclose(policy._variance(client_context(obs)), direct, rtol=1e-7)
    bonus = trained.exploration_scores(obs) - trained.mean_scores(obs)
    np.testing.assert_allclose(bonus, trained.cfg.alpha * np.sqrt(direct), rtol=1e-7)


def _send_preference(policy) -> float:
    """On a fixed batch of observations: mean P(send) for the policy-gradient agents, or the mean
    over clients of (mean send Q-value - no-send's Q-value) for DQN."""
    obs, _ = _probe()
    scores = policy.scores(obs)
    if policy.flat_view:
        return float((scores[:, 1:].mean(axis=1) - scores[:, 0]).mean())
    slot = np.exp(scores[:, :7] - scores[:, :7].max(axis=1, keepdims=True))
    return float(1.0 - (slot[:, 0] / slot.sum(axis=1)).mean())


@pytest.mark.slow
@pytest.mark.parametrize("name", _slow_for({"ppo", "recurrent_ppo"}, SB3_AGENTS))
def test_sb3_update_moves_its_policy_the_right_way(name):
    cfg = small(name, n_steps=8, batch_size=512, learning_starts=256, buffer_size=5_000)
    start = _send_preference(
        train_agent(cfg, MESSAGES_COST, total_timesteps=1, num_envs=64, progress=False)
    )
    trained = _send_preference(
        train_agent(cfg, MESSAGES_COST, total_timesteps=64 * 8 * 16, num_envs=64, progress=False)
    )
    # measured: P(send) 0.85 -> 0.05..0.47 for the policy-gradient agents; DQN's send advantage -0.02 -> -0.61
    assert trained < start - 0.2, (start, trained)


@pytest.mark.parametrize("name", SB3_AGENTS)
def test_sb3_agent_acts_within_masks_and_reloads(name, tmp_path):
    cfg = small(name, n_steps=8, batch_size=512, learning_starts=500, buffer_size=5_000)
    policy = train_agent(cfg, SETUP, total_timesteps=4_096, num_envs=64, progress=False)
    _acts_within_masks_and_reloads(policy, tmp_path)


def test_a_masked_lagrangian_agent_trains_as_maskable_ppo_acts_within_masks_and_reloads(tmp_path):
    from sb3_contrib import MaskablePPO

    cfg = AgentConfig(name="ppo_lagrangian", action_masking=True, n_steps=8, batch_size=512)
    policy = train_agent(cfg, SETUP, total_timesteps=4_096, num_envs=64, progress=False)
    assert isinstance(policy.model, MaskablePPO) and policy.name == "ppo_lagrangian"
    _acts_within_masks_and_reloads(policy, tmp_path)
    assert isinstance(load_policy(tmp_path / "ppo_lagrangian").model, MaskablePPO)
    plain = train_agent(
        AgentConfig(name="ppo_lagrangian", n_steps=8, batch_size=512),
        SETUP,
        total_timesteps=512,
        num_envs=64,
        progress=False,
    )
    assert not isinstance(plain.model, MaskablePPO)


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"name": "ppo", "action_masking": True},
            "agent.action_masking is not a field of 'ppo' .*; ppo_lagrangian have it",
        ),
        (
            {"name": "ppo_lagrangian", "action_masking": True, "asymmetric_critic": True},
            "cannot be combined",
        ),
    ],
)
def test_action_masking_is_refused_where_it_does_not_apply(change, message):
    with pytest.raises(ConfigError, match=message):
        AgentConfig(**change).check("agent")


def test_a_recurrent_agent_remembers_each_client_and_forgets_on_a_new_rollout():
    cfg = AgentConfig(name="recurrent_ppo", n_steps=8, batch_size=512)
    policy = train_agent(cfg, SETUP, total_timesteps=4_096, num_envs=64, progress=False)
    core = CadenceCore(SETUP, 200, client_id_offset=1 << 40)
    obs = core.reset(3)
    first_day = (obs, core.joint_masks())
    fresh = policy.scores(obs)  # no memory yet: what it makes of a first day
    first_actions = policy.act(*first_day)
    obs = core.step(first_actions).obs
    for _ in range(4):
        obs = core.step(policy.act(obs, core.joint_masks())).obs
    # five days of memory change what it makes of the same day
    assert np.abs(policy.scores(first_day[0]) - fresh).max() > 1e-4
    # a new rollout starts every client afresh: the first day's decisions come back
    policy.start_rollout()
    np.testing.assert_array_equal(policy.act(*first_day), first_actions)


def test_an_asymmetric_critic_reads_privileged_state_and_the_actor_does_not(tmp_path):
    import torch

    from agents.sb3_agents import OBS_SCALE, PRIVILEGED_NAMES

    cfg = AgentConfig(name="ppo_lagrangian", n_steps=8, batch_size=512, asymmetric_critic=True)
    policy = train_agent(cfg, SETUP, total_timesteps=4_096, num_envs=64, progress=False)
    model = policy.model
    assert model.observation_space.shape == (len(OBS_SCALE) + len(PRIVILEGED_NAMES),)
    obs, _ = _probe()
    x = torch.as_tensor(obs * OBS_SCALE, dtype=torch.float32)
    blank = torch.cat([x, torch.zeros(len(x), len(PRIVILEGED_NAMES))], dim=1)
    told = torch.cat([x, torch.randn(len(x), len(PRIVILEGED_NAMES))], dim=1)
    with torch.no_grad():
        logits = [
            torch.cat([d.logits for d in model.policy.get_distribution(v).distribution], dim=1)
            for v in (blank, told)
        ]
        values = [model.policy.predict_values(v) for v in (blank, told)]
    torch.testing.assert_close(logits[0], logits[1])  # the actor: the observation only
    assert not torch.allclose(values[0], values[1])  # the critic: the privileged state too
    _acts_within_masks_and_reloads(policy, tmp_path)  # and it acts on observations alone
    with pytest.raises(ConfigError, match="asymmetric_critic is not a field of 'dqn'"):
        validate(AgentConfig(name="dqn", asymmetric_critic=True), "agent")


@pytest.mark.parametrize("name", _slow_for({"linucb"}, ["ppo_lagrangian", "linucb"]))
def test_same_seed_same_policy(name):
    cfg = small(name, n_steps=8, batch_size=512)
    obs, masks = _probe()
    runs = [
        train_agent(cfg, SETUP, total_timesteps=64 * 8 * 4, num_envs=64, seed=5, progress=False)
        for _ in range(2)
    ]
    other = train_agent(cfg, SETUP, total_timesteps=64 * 8 * 4, num_envs=64, seed=6, progress=False)
    for policy in (*runs, other):
        policy.deterministic = True
    if name == "linucb":
        np.testing.assert_array_equal(runs[0].theta, runs[1].theta)
        assert not np.array_equal(runs[0].theta, other.theta)
    else:
        np.testing.assert_array_equal(runs[0].scores(obs), runs[1].scores(obs))
        assert not np.array_equal(runs[0].scores(obs), other.scores(obs))
    np.testing.assert_array_equal(runs[0].act(obs, masks), runs[1].act(obs, masks))


def test_ppo_lagrangian_raises_multipliers_when_costs_exceed_limits():
    from agents.sb3_agents import LagrangeUpdate, LagrangianCosts, build_model, make_training_env

    cfg = AgentConfig(
        name="ppo_lagrangian",
        n_steps=16,
        churn_limit=0.0,
        anxiety_limit=0.0,
        multiplier_lr=1.0,
        normalize_reward=False,
    )
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
    build_model(cfg, env).learn(
        total_timesteps=64 * 16 * 2,
        callback=LagrangeUpdate(env, {"churn": 10.0, "anxiety": 100.0}, 1.0),
    )
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


def test_a_bandit_saved_for_another_context_is_refused_by_name(tmp_path):
    bandit = BANDIT_CLASSES["linucb"](AgentConfig(name="linucb"))
    path = bandit.save(tmp_path / "model")
    data = dict(np.load(path, allow_pickle=False))
    d = 26 * 19  # the context of the 43-feature observation
    data["theta"], data["precision"], data["target"] = np.zeros(d), np.eye(d), np.zeros(d)
    np.savez(path, **data)
    with pytest.raises(ValueError, match="another observation; retrain"):
        BANDIT_CLASSES["linucb"].load(path)
    bandit.save(path)
    assert BANDIT_CLASSES["linucb"].load(path).theta.shape == bandit.theta.shape

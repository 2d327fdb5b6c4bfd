"""The model-based (propensity) agent: its response models learn what the data hold, it acts
within masks from the observation alone, saves and reloads, refuses export by name, and its
distilled network is an ordinary exportable policy."""

from __future__ import annotations

import numpy as np
import pytest

from agents.config import AgentConfig
from agents.propensity import (
    ACTION_FEATURES,
    MODELS,
    N_ACTION,
    N_CONTEXT,
    PropensityAgent,
    context,
    fit_model,
)
from agents.registry import load_policy, save_policy, train_agent
from envs.config import load_setup
from envs.core import CadenceCore
from envs.features import I_DECLARED_SLOT, OBS_DIM
from envs.spaces import JOINT_ACTIONS, multi_to_flat
from serve.onnx_export import NotExportable, graph_for
from simulate.labels import N_SLOTS

SETUP = load_setup(overrides=["env.horizon_days=60"])


@pytest.mark.slow  # 150 epochs of a bilinear fit
def test_a_bilinear_model_learns_which_slot_matches_the_declared_one():
    # synthetic log: a message opens with probability 0.6 when sent in the client's declared
    # slot, 0.1 otherwise; the fitted model must rank the declared slot first for every client
    rng = np.random.default_rng(0)
    n = 40_000
    obs = np.zeros((n, OBS_DIM), dtype=np.float32)
    declared = rng.integers(0, N_SLOTS, n)
    obs[np.arange(n), I_DECLARED_SLOT + declared] = 1.0
    action = rng.integers(1, len(JOINT_ACTIONS), n)
    slot = JOINT_ACTIONS[action, 0] - 1
    opened = rng.random(n) < np.where(slot == declared, 0.6, 0.1)
    theta = fit_model(context(obs), action, opened, ridge=1.0, epochs=150, seed=0)
    probe = np.zeros((N_SLOTS, OBS_DIM), dtype=np.float32)
    probe[np.arange(N_SLOTS), I_DECLARED_SLOT + np.arange(N_SLOTS)] = 1.0
    p = 1.0 / (1.0 + np.exp(-((context(probe) @ theta) @ ACTION_FEATURES.T)))
    by_slot = np.stack([p[:, JOINT_ACTIONS[:, 0] == s + 1].mean(axis=1) for s in range(N_SLOTS)], 1)
    np.testing.assert_array_equal(by_slot.argmax(axis=1), np.arange(N_SLOTS))
    np.testing.assert_allclose(np.diag(by_slot), 0.6, atol=0.05)


@pytest.fixture(scope="module")
def trained():
    # two rounds of two days of 2,048 clients: the second round acts on the first's models
    cfg = AgentConfig(name="propensity", model_rounds=2, model_epochs=1)
    return train_agent(cfg, SETUP, total_timesteps=2048 * 4, num_envs=2048, seed=3, progress=False)


@pytest.mark.slow  # two training rounds of 2,048 clients (module fixture)
def test_it_acts_within_masks_from_the_observation_and_reloads(trained, tmp_path):
    assert set(trained.theta) == set(MODELS)
    assert all(t.shape == (N_CONTEXT, N_ACTION) for t in trained.theta.values())
    core = CadenceCore(SETUP, 400, client_id_offset=1 << 40)
    obs = core.reset(5)
    again = load_policy(save_policy(trained, tmp_path / "propensity"))
    sends = 0
    for _ in range(15):
        masks = core.joint_masks()
        actions = trained.act(obs, masks)
        assert masks[np.arange(len(obs)), multi_to_flat(actions)].all()
        np.testing.assert_array_equal(again.act(obs, masks), actions)
        sends += int((actions[:, 0] > 0).sum())
        obs = core.step(actions).obs
    assert sends > 0  # it does message people


@pytest.mark.slow  # two training rounds of 2,048 clients (module fixture)
def test_its_values_follow_the_reward_and_the_threshold(trained):
    core = CadenceCore(SETUP, 200, client_id_offset=1 << 41)
    obs = core.reset(1)
    masks = core.joint_masks()
    values = trained.action_values(obs, masks)
    assert (values[:, 0] == 0).all() and np.isneginf(values[~masks]).all()
    stricter = PropensityAgent(AgentConfig(name="propensity", send_threshold=1.0))
    stricter.theta = trained.theta
    np.testing.assert_allclose(
        stricter.action_values(obs, masks)[:, 1:][masks[:, 1:]],
        values[:, 1:][masks[:, 1:]] - (1.0 - trained.cfg.send_threshold),
        rtol=1e-5,
        atol=1e-5,
    )
    never = PropensityAgent(AgentConfig(name="propensity", send_threshold=100.0))
    never.theta = trained.theta
    assert (never.act(obs, masks)[:, 0] == 0).all()


@pytest.mark.slow  # three trainings of the model-based agent
def test_same_seed_same_models():
    cfg = AgentConfig(name="propensity", model_rounds=1, model_epochs=1)
    runs = [
        train_agent(cfg, SETUP, 2048, 2048, seed=s, progress=False).theta["opened"]  # one day
        for s in (4, 4, 5)
    ]
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_unfitted_and_mismatched_models_are_refused(tmp_path):
    with pytest.raises(RuntimeError, match="fit"):
        PropensityAgent().act(np.zeros((1, OBS_DIM), np.float32), np.ones((1, 361), bool))
    bad = tmp_path / "bad.npz"
    np.savez(bad, **{f"theta_{k}": np.zeros((5, N_ACTION)) for k in MODELS})
    with pytest.raises(ValueError, match="another observation"):
        PropensityAgent.load(bad)


@pytest.mark.slow  # two training rounds of 2,048 clients (module fixture) and a distillation
def test_export_is_refused_by_name_and_the_distilled_network_exports(trained):
    with pytest.raises(NotExportable, match="distil"):
        graph_for(trained)
    cfg = AgentConfig(name="propensity", model_rounds=1, model_epochs=1, distil=True)
    student = train_agent(cfg, SETUP, 2048 * 2, 2048, seed=0, progress=False)
    assert student.name == "propensity_distilled"
    assert 0.0 <= student.distil_agreement <= 1.0
    graph_for(student)  # an ordinary network: the export path takes it

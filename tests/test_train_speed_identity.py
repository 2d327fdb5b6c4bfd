"""The default agent's update (``FastMaskablePPO.train``: the rollout as tensors made once,
minibatches by ``index_select``, masks laid out once, logged losses read at the end) against
sb3-contrib's ``MaskablePPO.train`` on the same model: the same parameters, optimiser state and
logged values to the last bit."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch
from sb3_contrib import MaskablePPO

from agents.config import AgentConfig
from agents.sb3_agents import FastMaskablePPO, build_model, make_training_env
from envs.config import load_setup

CLIENTS, N_STEPS, ROLLOUTS = 64, 16, 3


def _trained(sb3_update: bool, variant: str) -> FastMaskablePPO:
    """Three rollouts of the default agent (smaller: 64 clients, 16 days, minibatches of 256,
    so an epoch has four), updated by this module's ``train`` or by sb3-contrib's."""
    cfg = AgentConfig(
        name="ppo_lagrangian", action_masking=True, n_steps=N_STEPS, batch_size=256, n_epochs=3
    )
    env = make_training_env(cfg, load_setup(), CLIENTS)
    env.seed(0)
    model = build_model(cfg, env, seed=0)
    assert isinstance(model, FastMaskablePPO)
    if variant == "clipped values, early stop":
        model.clip_range_vf = lambda _: 0.1
        model.target_kl = 1e-4
    if sb3_update:
        model.train = types.MethodType(MaskablePPO.train, model)
    model.learn(total_timesteps=CLIENTS * N_STEPS * ROLLOUTS)
    return model


@pytest.mark.parametrize("variant", ["default", "clipped values, early stop"])
def test_the_update_gives_sb3_contribs_parameters_to_the_last_bit(variant):
    ours, theirs = _trained(False, variant), _trained(True, variant)
    assert ours.num_timesteps == theirs.num_timesteps == CLIENTS * N_STEPS * ROLLOUTS
    a, b = ours.policy.state_dict(), theirs.policy.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sa, sb = ours.policy.optimizer.state_dict(), theirs.policy.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for i, state in sa["state"].items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][i][key])), key
    assert ours._n_updates == theirs._n_updates
    logged, expected = ours.logger.name_to_value, theirs.logger.name_to_value
    assert logged.keys() == expected.keys()
    for key, value in expected.items():
        assert np.array_equal(logged[key], value), key
    for name in ("values", "returns", "advantages", "observations", "action_masks"):
        assert np.array_equal(
            getattr(ours.rollout_buffer, name), getattr(theirs.rollout_buffer, name)
        ), name

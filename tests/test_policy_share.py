"""Shadow mode's policy share (``exploration.policy_share``): on that share of decisions the
policy's own choice replaces the firm's before epsilon's draw; every action stays inside the
guards, its stated probability is exact (sums to 1 over the allowed actions, matches the draws),
and the setting is refused where it means nothing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_exploration import (
    DEFAULT_RULES,
    _flat,
    _load,
    _table,
    joint_probabilities,
    runtime_for,
)
from test_onnx_choice import RULES, SCORE, clients

from envs.spaces import JOINT_ACTIONS
from serve.choice import Exploration
from serve.decisions import frame_of


def _probabilities(runtime, x, logits, base, policy) -> np.ndarray:
    """(N, 361) probability of every joint action with the policy's choice ``policy``."""
    n, m = len(x), len(JOINT_ACTIONS)
    tiled = np.repeat(np.arange(n), m)
    actions = np.tile(JOINT_ACTIONS, (n, 1))
    return runtime.probability_of(
        x[tiled], logits[tiled], base[tiled], actions, policy=policy[tiled]
    ).reshape(n, m)


@pytest.mark.slow  # 100 examples, an ONNX session built for each
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=RULES,
    epsilon=st.floats(0, 1),
    share=st.floats(0, 1),
    rows=st.integers(1, 5),
    seed=st.integers(0, 2**32),
    data=st.data(),
)
def test_policy_share_draws_are_allowed_and_their_probabilities_exact(
    rules, epsilon, share, rows, seed, data
):
    setting = Exploration(epsilon=epsilon, policy_share=share, seed=seed)
    runtime = runtime_for(rules, "log_probs", setting, shadow=True)
    opted = np.array(data.draw(st.lists(st.integers(0, 1), min_size=3 * rows, max_size=3 * rows)))
    sent = np.array(data.draw(st.lists(st.integers(0, 9), min_size=3 * rows, max_size=3 * rows)))
    tier = np.array(data.draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows)))
    x = clients(opted.reshape(rows, 3), sent.reshape(rows, 3), tier)
    scores = data.draw(st.lists(SCORE, min_size=19 * rows, max_size=19 * rows))
    logits = np.array(scores, dtype=np.float32).reshape(rows, 19)
    greedy, _ = runtime.choose(logits, x)
    # the firm's action: any allowed one (here: the first allowed in a random order)
    joint = runtime.guards.joint_mask(x)
    rng = np.random.default_rng(seed % 1000)
    order = rng.permutation(len(JOINT_ACTIONS))
    firm = JOINT_ACTIONS[order[np.argmax(joint[:, order], axis=1)]].copy()
    actions, propensity, _, _ = runtime.explore(x, logits, firm, greedy)
    assert runtime.guards.is_allowed(x, actions).all()
    table = _probabilities(runtime, x, logits, firm, greedy)
    assert (table[~joint] == 0).all()
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    drawn = table[np.arange(rows), _flat(actions)]
    np.testing.assert_allclose(propensity, np.maximum(drawn, np.finfo(float).tiny), rtol=1e-12)
    # without a share it is epsilon around the firm's action, as before
    plain = runtime_for(rules, "log_probs", Exploration(epsilon=epsilon), shadow=True)
    np.testing.assert_allclose(
        joint_probabilities(plain, x, logits, firm),
        _probabilities(plain, x, logits, firm, greedy),
    )


def test_policy_share_draws_follow_the_stated_probabilities():
    """40,000 decisions of one client: the firm's, the policy's and the other actions' counts
    within 5 standard errors of their stated probabilities."""
    n = 40_000
    x = clients(np.array([[0, 1, 0]]), np.array([[1, 0, 0]]), np.array([1])).repeat(n, axis=0)
    logits = np.random.default_rng(3).normal(0, 1.5, (1, 19)).astype(np.float32).repeat(n, 0)
    setting = Exploration(epsilon=0.1, policy_share=0.3, seed=5)
    runtime = runtime_for(DEFAULT_RULES, "log_probs", setting, shadow=True)
    greedy, _ = runtime.choose(logits, x)
    # the firm's action: an allowed send that is not the policy's choice
    joint = runtime.guards.joint_mask(x[:1])[0]
    other = [i for i in np.flatnonzero(joint) if i != _flat(greedy[:1])[0] and JOINT_ACTIONS[i, 0]]
    firm = np.repeat(JOINT_ACTIONS[other[0]][None, :], n, axis=0)
    actions, propensity, _, _ = runtime.explore(x, logits, firm, greedy)
    flat = _flat(actions)
    seen, counts = np.unique(flat, return_counts=True)
    stated = {int(f): float(p) for f, p in zip(flat, propensity, strict=True)}
    p = np.array([stated[int(f)] for f in seen])
    assert (np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 3).all()
    allowed = runtime.guards.joint_mask(x[:1]).sum()
    assert stated[int(_flat(firm[:1])[0])] == pytest.approx(0.9 * 0.7 + 0.1 / allowed)
    assert stated[int(_flat(greedy[:1])[0])] == pytest.approx(0.9 * 0.3 + 0.1 / allowed)


def test_shadow_decisions_carry_the_policy_share(bandit_export):
    runtime = _load(
        bandit_export, shadow=True, exploration=Exploration(epsilon=0.05, policy_share=0.25, seed=2)
    )
    n = 2000
    zero = np.zeros(n, dtype=np.int64)
    firm = {"firm_slot": zero, "firm_tone": zero, "firm_channel": zero, "firm_content": zero}
    keys = {"client_id": np.arange(n), "day": np.full(n, 3)}
    d = runtime.decide(_table(n, seed=5) | firm | keys, explain=False)
    frame = frame_of(d)
    assert frame["exploration"].unique().to_list() == ["epsilon=0.05;policy_share=0.25"]
    policy_sends = d.policy_action[:, 0] != 0
    took_policy = (d.action == d.policy_action).all(axis=1) & policy_sends
    # about a quarter of the rows where the policy would send get its choice
    assert 0.18 < took_policy.sum() / policy_sends.sum() < 0.32
    allowed = d.allowed_actions
    p = np.where(
        took_policy,
        0.95 * 0.25 + 0.05 / allowed,
        np.where(
            d.action[:, 0] == 0,
            0.95 * (0.75 + 0.25 * ~policy_sends) + 0.05 / allowed,
            0.05 / allowed,
        ),
    )
    np.testing.assert_allclose(d.propensity, p, rtol=1e-9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"policy_share": 1.5}, "policy_share must be a number in \\[0, 1\\], got 1.5"),
        ({"policy_share": -0.1}, "policy_share must be"),
        ({"policy_share": 0.2, "temperature": 1.0}, "policy_share goes with epsilon"),
    ],
)
def test_a_bad_policy_share_is_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Exploration(**kwargs)


def test_policy_share_belongs_to_shadow_mode(bandit_export):
    with pytest.raises(ValueError, match="policy_share is for shadow mode"):
        _load(bandit_export, exploration=Exploration(epsilon=0.1, policy_share=0.2))

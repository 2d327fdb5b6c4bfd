"""Exploration in the runtime: explored actions are always allowed, their probabilities are exact
(they sum to 1 over the allowed actions and match the draws), epsilon 0 is the argmax, seeds
reproduce, shadow mode returns the firm's action held to the guards, and every decision carries
what the decision log needs."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_onnx_choice import COL, NAMES, RULES, SCORE, clients

from envs.spaces import JOINT_ACTIONS
from serve import graph_choice
from serve.choice import Exploration
from serve.decisions import frame_of
from serve.onnx_export import build_manifest
from serve.runtime import PolicyRuntime, RequestError

DEFAULT_RULES = build_manifest("test", "log_probs", None, None, None)["mask_rules"]


def runtime_for(rules: dict, rule: str, exploration: Exploration | None, **kw) -> PolicyRuntime:
    """A runtime over a manifest with ``rules``; its scores are fed by hand (``explore``)."""
    manifest = build_manifest("test", rule, None, None, None)
    manifest["mask_rules"] = rules
    session = ort.InferenceSession(
        graph_choice.standalone(manifest).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    return PolicyRuntime(session, manifest, exploration=exploration, **kw)


def joint_probabilities(runtime, x, logits, base) -> np.ndarray:
    """(N, 361) probability of every joint action, from :meth:`PolicyRuntime.probability_of`."""
    n, m = len(x), len(JOINT_ACTIONS)
    tiled = np.repeat(np.arange(n), m)
    actions = np.tile(JOINT_ACTIONS, (n, 1))
    return runtime.probability_of(x[tiled], logits[tiled], base[tiled], actions).reshape(n, m)


SETTING = st.one_of(
    st.builds(Exploration, epsilon=st.floats(0, 1), seed=st.integers(0, 2**32)),
    st.builds(
        Exploration,
        temperature=st.sampled_from([1e-3, 0.05, 0.5, 1.0, 3.0, 1e3]),
        seed=st.integers(0, 2**32),
    ),
)


@pytest.mark.slow  # 150 examples, an ONNX session built for each
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rules=RULES,
    rule=st.sampled_from(["log_probs", "additive"]),
    setting=SETTING,
    rows=st.integers(1, 6),
    data=st.data(),
)
def test_explored_actions_are_allowed_and_their_probabilities_are_exact(
    rules, rule, setting, rows, data
):
    runtime = runtime_for(rules, rule, setting)
    opted = np.array(data.draw(st.lists(st.integers(0, 1), min_size=3 * rows, max_size=3 * rows)))
    sent = np.array(data.draw(st.lists(st.integers(0, 9), min_size=3 * rows, max_size=3 * rows)))
    tier = np.array(data.draw(st.lists(st.integers(0, 3), min_size=rows, max_size=rows)))
    x = clients(opted.reshape(rows, 3), sent.reshape(rows, 3), tier)
    scores = data.draw(st.lists(SCORE, min_size=19 * rows, max_size=19 * rows))
    logits = np.array(scores, dtype=np.float32).reshape(rows, 19)
    greedy, _ = runtime.choose(logits, x)
    actions, propensity, allowed, _ = runtime.explore(x, logits, greedy)
    assert runtime.guards.is_allowed(x, actions).all()
    assert ((propensity > 0) & (propensity <= 1)).all(), propensity
    joint = runtime.guards.joint_mask(x)
    np.testing.assert_array_equal(joint.sum(axis=1), allowed)
    table = joint_probabilities(runtime, x, logits, greedy)
    assert (table[~joint] == 0).all()  # nothing outside the guards, ever
    assert ((table >= 0) & (table <= 1)).all()
    np.testing.assert_allclose(table.sum(axis=1), 1.0, rtol=0, atol=1e-9)
    drawn = table[np.arange(rows), _flat(actions)]
    np.testing.assert_allclose(propensity, np.maximum(drawn, np.finfo(float).tiny), rtol=1e-12)


def _flat(actions: np.ndarray) -> np.ndarray:
    """Index into JOINT_ACTIONS of each (N, 4) action."""
    key = {tuple(a): i for i, a in enumerate(JOINT_ACTIONS.tolist())}
    canon = actions.copy()
    canon[canon[:, 0] == 0, 1:] = 0
    return np.array([key[tuple(a)] for a in canon.tolist()])


@pytest.mark.slow  # 60 examples, three ONNX sessions built for each
@settings(max_examples=60, deadline=None)
@given(rules=RULES, scores=st.lists(st.floats(-30, 30, width=32), min_size=19, max_size=19))
def test_epsilon_0_is_the_argmax_and_softmax_at_1_is_the_policys_probability(rules, scores):
    x = clients(np.zeros((1, 3)), np.zeros((1, 3)), np.array([3]))
    logits = np.array([scores], dtype=np.float32)
    greedy, probability = runtime_for(rules, "log_probs", None).choose(logits, x)
    none = runtime_for(rules, "log_probs", Exploration(epsilon=0.0, seed=1))
    actions, propensity, _, changed = none.explore(x, logits, greedy)
    np.testing.assert_array_equal(actions, greedy)
    assert (propensity == 1).all() and not changed.any()
    soft = runtime_for(rules, "log_probs", Exploration(temperature=1.0, seed=1))
    np.testing.assert_allclose(
        soft.probability_of(x, logits, greedy, greedy), probability, rtol=1e-9
    )


@pytest.mark.parametrize(
    "setting", [Exploration(epsilon=0.3, seed=5), Exploration(temperature=0.7, seed=5)]
)
def test_draws_follow_the_stated_probabilities(setting):
    """40,000 draws for one client: each action's count within 5 standard errors of its stated
    probability, and the stated probabilities of what was drawn cover nearly all mass."""
    n = 40_000
    x = clients(np.array([[0, 1, 0]]), np.array([[1, 0, 0]]), np.array([1])).repeat(n, axis=0)
    logits = np.random.default_rng(3).normal(0, 1.5, (1, 19)).astype(np.float32).repeat(n, 0)
    runtime = runtime_for(DEFAULT_RULES, "log_probs", setting)
    greedy, _ = runtime.choose(logits, x)
    actions, propensity, _, _ = runtime.explore(x, logits, greedy)
    flat = _flat(actions)
    seen, counts = np.unique(flat, return_counts=True)
    stated = {int(f): float(p) for f, p in zip(flat, propensity, strict=True)}
    p = np.array([stated[int(f)] for f in seen])
    # 5 standard errors, and 3 draws of slack for the rare actions (a Poisson count of mean
    # 0.02 is 1 now and then among 361 actions)
    assert (np.abs(counts - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 3).all()
    assert p.sum() > 0.995


def test_a_seed_reproduces_the_draws_and_none_draws_from_entropy():
    x = clients(np.zeros((500, 3)), np.zeros((500, 3)), np.full(500, 3))
    logits = np.random.default_rng(0).normal(0, 1, (500, 19)).astype(np.float32)

    def draws(seed):
        runtime = runtime_for(DEFAULT_RULES, "log_probs", Exploration(epsilon=0.5, seed=seed))
        greedy, _ = runtime.choose(logits, x)
        return runtime.explore(x, logits, greedy)[0]

    np.testing.assert_array_equal(draws(7), draws(7))
    assert (draws(7) != draws(8)).any()
    assert (draws(None) != draws(None)).any()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"epsilon": 1.5}, "epsilon must be a number in \\[0, 1\\], got 1.5"),
        ({"epsilon": -0.1}, "epsilon must be"),
        ({"temperature": 0.0}, "temperature must be a number in"),
        ({"temperature": float("nan")}, "temperature must be"),
        ({"epsilon": 0.1, "temperature": 1.0}, "epsilon or temperature, not both"),
        ({"seed": -1}, "seed must be a whole number"),
    ],
)
def test_a_bad_exploration_setting_is_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Exploration(**kwargs)


# ----- through a real export: decide, shadow mode, the log's frame -------------------------------
@pytest.fixture
def export(bandit_export: Path) -> Path:
    """The shared read-only export of a LinUCB with fixed random weights (tests/conftest.py)."""
    return bandit_export


def _load(folder: Path, **kwargs) -> PolicyRuntime:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return PolicyRuntime.load(folder, **kwargs)


def _table(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = clients(
        rng.integers(0, 2, (n, 3)) * (rng.random((n, 3)) < 0.3),
        rng.integers(0, 3, (n, 3)),
        rng.integers(0, 4, n),
    )
    x[:, COL["declared_risk"]] = rng.random(n)
    x[:, COL["goal_retirement"] + rng.integers(0, 4, n) * 0] = 1
    return {name: x[:, j] for j, name in enumerate(NAMES)}


def test_decide_carries_what_the_decision_log_needs(export):
    runtime = _load(export, exploration=Exploration(epsilon=0.2, seed=1))
    table = _table(300) | {"client_id": np.arange(300) + 10, "day": np.full(300, 4.0)}
    decisions = runtime.decide(table, explain=False)
    assert len(set(decisions.decision_id)) == 300
    assert decisions.policy_version.startswith("sha256:") and decisions.exploration == "epsilon=0.2"
    frame = frame_of(decisions)
    assert frame["client_id"].to_list() == list(range(10, 310))
    assert set(frame["day"].to_list()) == {4}
    assert 0 < frame["agree"].mean() < 1  # some rows explored away from the policy
    explored = ~frame["agree"].to_numpy()
    np.testing.assert_allclose(
        frame["propensity"].to_numpy()[explored],
        0.2 / frame["allowed_actions"].to_numpy()[explored],
    )


def test_the_graph_and_numpy_decide_the_same_explored_actions(export):
    table = _table(400, seed=2)
    for setting in (None, Exploration(epsilon=0.3, seed=4), Exploration(temperature=0.5, seed=4)):
        graph = _load(export, exploration=setting).decide(table, explain=False)
        numpy = _load(export, exploration=setting, graph_choice=False).decide(table, explain=False)
        np.testing.assert_array_equal(graph.action, numpy.action)
        np.testing.assert_allclose(graph.propensity, numpy.propensity, rtol=1e-6)


def test_shadow_mode_returns_the_firms_action_and_logs_the_policys_beside_it(export):
    runtime = _load(export, shadow=True)
    n = 200
    table = _table(n, seed=3)
    firm = np.zeros((n, 4), dtype=np.int64)  # the firm sends nothing, except to the first 20
    firm[:20] = (2, 0, 0, 1)  # morning, informative, email, education
    allowed = runtime.guards.is_allowed(runtime.validate(table), firm)
    firm[:20][~allowed[:20]] = 0
    cols = dict(
        zip(("firm_slot", "firm_tone", "firm_channel", "firm_content"), firm.T, strict=True)
    )
    decisions = runtime.decide(table | cols, explain=False)
    assert decisions.mode == "shadow"
    np.testing.assert_array_equal(decisions.action, firm)
    assert (decisions.propensity == 1).all()
    policy = runtime.decide if False else _load(export).decide(table, explain=False)
    np.testing.assert_array_equal(decisions.policy_action, policy.action)
    np.testing.assert_array_equal(
        decisions.agree,
        (firm == policy.action).all(axis=1) | ((firm[:, 0] == 0) & (policy.action[:, 0] == 0)),
    )


def test_shadow_mode_explores_around_the_firms_action_at_epsilon(export):
    runtime = _load(export, shadow=True, exploration=Exploration(epsilon=0.25, seed=9))
    n = 2000
    table = _table(n, seed=4)
    zero = np.zeros(n, dtype=np.int64)
    cols = {"firm_slot": zero, "firm_tone": zero, "firm_channel": zero, "firm_content": zero}
    d = runtime.decide(table | cols, explain=False)
    kept = d.action[:, 0] == 0
    p = np.where(kept, 0.75 + 0.25 / d.allowed_actions, 0.25 / d.allowed_actions)
    np.testing.assert_allclose(d.propensity, p)
    assert 0.05 < 1 - kept.mean() < 0.3
    assert runtime.guards.is_allowed(runtime.validate(table), d.action).all()


def test_a_firms_action_the_guards_refuse_is_the_fallback_or_refused(export):
    table = _table(3, seed=5)
    table["opted_out_email"][:] = 1  # nobody may be e-mailed
    one = np.ones(3, dtype=np.int64)
    cols = {
        "firm_slot": 2 * one,
        "firm_tone": 0 * one,
        "firm_channel": 0 * one,
        "firm_content": 0 * one,
    }
    replaced = _load(export, shadow=True).decide(table | cols, explain=True)
    assert (replaced.action[:, 2] != 0).all() | (replaced.action[:, 0] == 0).all()
    assert "opted out of email" in replaced.reasons[0][-1]
    assert "safe fallback" in replaced.reasons[0][-1]
    with pytest.raises(RequestError, match="firm's action in row 0 is not allowed.*opted out"):
        _load(export, shadow=True, not_allowed="refuse").decide(table | cols)


def test_the_firms_columns_belong_to_shadow_mode_only(export):
    table = _table(2)
    zero = np.zeros(2)
    cols = {"firm_slot": zero, "firm_tone": zero, "firm_channel": zero, "firm_content": zero}
    with pytest.raises(RequestError, match="firm_slot is read in shadow mode only"):
        _load(export).decide(table | cols)
    with pytest.raises(RequestError, match="shadow mode needs the firm's own action"):
        _load(export, shadow=True).decide(table)
    with pytest.raises(RequestError, match="lacks column.*firm_content"):
        _load(export, shadow=True).decide(table | {k: cols[k] for k in list(cols)[:3]})
    with pytest.raises(RequestError, match="firm_channel = 3 in row 1 must lie in 0..2"):
        bad = cols | {"firm_slot": np.ones(2), "firm_channel": np.array([0.0, 3.0])}
        _load(export, shadow=True).decide(table | bad)
    with pytest.raises(ValueError, match="epsilon only"):
        _load(export, shadow=True, exploration=Exploration(temperature=1.0))


def test_client_ids_and_days_must_be_whole(export):
    table = _table(2)
    with pytest.raises(RequestError, match="client_id = 1.5 in row 1 must be a whole number"):
        _load(export).decide(table | {"client_id": np.array([1.0, 1.5]), "day": np.zeros(2)})
    with pytest.raises(RequestError, match="day = 5000 in row 0 is outside"):
        _load(export).decide(table | {"client_id": np.arange(2), "day": np.full(2, 5000)})

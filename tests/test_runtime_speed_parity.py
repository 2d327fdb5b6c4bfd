"""The runtime's fast paths decide exactly as the checks and choices they replace: the compiled
intake accepts exactly what the checks one by one accept (and the refusals name the same
problem) and gives the same features, masks and review inputs, the shared guard masks allow exactly the 361-action table's actions, the allowed count
without exploration is the table's, decisions with and without the graph's choice agree with
exploration off and on, in shadow mode and with tripped circuits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_exploration import _load
from test_onnx_choice import COL, NAMES
from test_runtime_fail_closed import clients

from envs.spaces import JOINT_ACTIONS, multi_to_flat
from serve import contract
from serve.choice import Exploration
from serve.exploration import allowed_count, allowed_pairs
from serve.intake import BLOCK
from serve.request import RequestError
from serve.runtime import PolicyRuntime


def _refusal(runtime: PolicyRuntime, x: np.ndarray) -> str | None:
    """What the checks one by one say of ``x``: the message, or None where they accept it."""
    try:
        runtime.checks.refuse(x)
    except RequestError as exc:
        return str(exc)
    return None


BAD_VALUES = [np.nan, np.inf, -np.inf, 0.5, -1e-7, 1 + 5e-7, 2.5, -0.0, 1.0, 0.0, 3.0, 7.0, 8.0]


def _numpy_intake(runtime: PolicyRuntime, x: np.ndarray, consent: str) -> tuple:
    """What the numpy path makes of ``x``: checks one by one, consent, masks, review inputs."""
    checked, tier = runtime.checks.checked(x, consent, runtime.max_rows)
    return checked, runtime.guards.masks(checked, tier), runtime.guards.review_inputs(checked)


@pytest.mark.parametrize("consent", ["zero", "refuse"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rows", [1, 63, BLOCK, 200])
def test_the_compiled_intake_accepts_exactly_what_the_checks_one_by_one_accept(
    bandit_export, dtype, rows, consent
):
    runtime = _load(bandit_export, consent=consent)
    rng = np.random.default_rng(rows)
    accepted = 0
    for trial in range(120):
        x = clients(rows, seed=trial).astype(dtype)
        x[:, [COL[f"sent_7d_{c}"] for c in contract.CHANNELS]] = rng.integers(0, 6, (rows, 3))
        if consent == "refuse" and trial % 2:  # nothing hidden: the request may pass
            x[:, runtime.checks.min_tier > 0] = 0.0
            x[:, runtime.guards.i_tier] = np.eye(4)[np.zeros(rows, dtype=int)]
        for _ in range(trial % 4):  # none to three cells changed, anywhere
            x[rng.integers(0, rows), rng.integers(0, len(NAMES))] = BAD_VALUES[
                rng.integers(0, len(BAD_VALUES))
            ]
        expected = _refusal(runtime, x)
        try:
            reference = _numpy_intake(runtime, x, consent)
        except RequestError as exc:
            reference, expected = None, str(exc)
        got = runtime.intake.read(x, consent)
        assert (got is None) == (reference is None), expected
        if got is not None:  # the same features, masks and review inputs as the numpy path
            accepted += 1
            np.testing.assert_array_equal(got.x, reference[0])
            assert got.x.dtype == np.float32 and got.x is not x
            for field in got.masks._fields:
                np.testing.assert_array_equal(
                    getattr(got.masks, field), getattr(reference[1], field), err_msg=field
                )
                assert getattr(got.masks, field).dtype == getattr(reference[1], field).dtype
            for mine, theirs in zip(got.review, reference[2], strict=True):
                np.testing.assert_array_equal(mine, theirs)
            np.testing.assert_array_equal(runtime.validate(x), reference[0])
        else:
            with pytest.raises(RequestError) as refused:
                runtime.validate(x)
            assert str(refused.value) == expected
    assert accepted > 0  # the comparison ran on accepted requests too


CELL = st.floats(width=32) | st.sampled_from(BAD_VALUES) | st.integers(-3, 9).map(float)
"""any float32, the edge values, whole numbers in and out of every range"""


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    rows=st.integers(1, 140),
    seed=st.integers(0, 2**16),
    cells=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 62), CELL), max_size=6),
    dtype=st.sampled_from([np.float32, np.float64]),
    consent=st.sampled_from(["zero", "refuse"]),
)
def test_the_compiled_intake_refuses_or_accepts_any_request_as_the_numpy_path(
    bandit_export, rows, seed, cells, dtype, consent
):
    """Any valid request with up to six cells set to any value: the compiled pass accepts it
    exactly where the checks one by one do, with the same features, masks and review inputs;
    what it accepts never shows the network a feature the client's tier hides."""
    runtime = _load(bandit_export, consent=consent)
    x = clients(rows, seed=seed).astype(dtype)
    if consent == "refuse" and seed % 2:
        x[:, runtime.checks.min_tier > 0] = 0.0  # nothing hidden: may pass
    for row, col, value in cells:
        x[row % rows, col] = value
    try:
        reference = _numpy_intake(runtime, x, consent)
    except RequestError:
        reference = None
    got = runtime.intake.read(x, consent)
    assert (got is None) == (reference is None)
    if got is not None:
        np.testing.assert_array_equal(got.x, reference[0])
        for mine, theirs in zip(got.masks, reference[1], strict=True):
            np.testing.assert_array_equal(mine, theirs)
        for mine, theirs in zip(got.review, reference[2], strict=True):
            np.testing.assert_array_equal(mine, theirs)
        hidden = runtime.checks.min_tier[None, :] > got.masks.tier[:, None]
        assert (got.x[hidden] == 0).all()


def test_without_the_compiled_intake_the_numpy_path_decides_alike(bandit_export):
    """A manifest the compiled pass does not suit (:attr:`Intake.usable` False) is served by
    the numpy checks, masks and review inputs: the same decisions."""
    compiled_runtime, numpy_runtime = _load(bandit_export), _load(bandit_export)
    numpy_runtime.intake.usable = False
    x = clients(300, seed=21)
    assert numpy_runtime.intake.read(x, "zero") is None
    _same(compiled_runtime.decide(x, explain=False), numpy_runtime.decide(x, explain=False))
    np.testing.assert_array_equal(compiled_runtime.validate(x), numpy_runtime.validate(x))


def test_nan_and_infinite_features_are_refused_by_name_in_any_row(bandit_export):
    runtime = _load(bandit_export)
    for value in (np.nan, np.inf, -np.inf):
        for row in (0, 70, 199):  # the folded blocks and the rows after the last whole block
            x = clients(200, seed=row)
            x[row, COL["declared_risk"]] = value
            with pytest.raises(RequestError, match=f"declared_risk is not finite .* in row {row}"):
                runtime.validate(x)


def test_consent_refuse_names_the_hidden_feature_and_zero_hides_it(bandit_export):
    x = clients(100, seed=4)
    x[:, COL["consent_tier_0"] : COL["consent_tier_0"] + 4] = np.eye(4)[np.full(100, 1)]
    x[:, _load(bandit_export).checks.min_tier > 1] = 0.0  # nothing tier 1 hides
    _load(bandit_export, consent="refuse").validate(x)
    x[37, COL["market_stress"]] = 2.0  # tier 2 needed
    with pytest.raises(RequestError, match="market_stress in row 37 is set, but .* tier 1"):
        _load(bandit_export, consent="refuse").validate(x)
    shown = _load(bandit_export, consent="zero").validate(x)
    assert shown[37, COL["market_stress"]] == 0 and x[37, COL["market_stress"]] == 2.0


def test_shared_masks_allow_exactly_the_action_tables_actions_and_count_them(bandit_export):
    runtime = _load(bandit_export)
    rng = np.random.default_rng(1)
    n = 300
    x = clients(n, seed=5)
    x[:, [COL[f"sent_7d_{c}"] for c in contract.CHANNELS]] = rng.integers(0, 5, (n, 3))
    x = runtime.validate(x)
    masks = runtime.guards.masks(x)
    joint = runtime.guards.joint_mask(x)  # (N, 361), the table
    for index in range(len(JOINT_ACTIONS)):
        actions = np.repeat(JOINT_ACTIONS[index][None, :], n, axis=0)
        np.testing.assert_array_equal(runtime.guards.allowed_by(masks, actions), joint[:, index])
    count = runtime.draws.count(masks)
    np.testing.assert_array_equal(count, joint.sum(axis=1))
    channel_ok, content_ok = runtime.guards.allowed_channels_contents(x)
    channel_ok &= runtime.draws.has_open_slot[:, None]
    pair_ok = allowed_pairs(channel_ok, runtime.draws.open_slots, int(runtime.nvec[0]) - 1)
    np.testing.assert_array_equal(count, allowed_count(pair_ok, int(runtime.nvec[1]), content_ok))
    assert count.dtype == np.int64


SETTINGS = [
    None,
    Exploration(epsilon=0.2, seed=3),
    Exploration(temperature=0.5, seed=4),
]


def _fields(d) -> dict:
    return {
        "action": d.action,
        "probability": d.probability,
        "propensity": d.propensity,
        "policy_action": d.policy_action,
        "policy_probability": d.policy_probability,
        "allowed_actions": d.allowed_actions,
        "needs_review": d.needs_review,
    }


def _same(a, b) -> None:
    """The same decisions; the policy's probabilities within the graph's float32 sums."""
    for key, value in _fields(a).items():
        other = _fields(b)[key]
        assert value.dtype == other.dtype, key
        if key in ("probability", "policy_probability"):
            np.testing.assert_allclose(value, other, rtol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(value, other, err_msg=key)
    assert list(a.slot) == list(b.slot) and list(a.content) == list(b.content)


@pytest.mark.parametrize("setting", SETTINGS, ids=["none", "epsilon", "softmax"])
def test_the_graph_and_numpy_decide_alike_and_without_exploration_propensity_is_1(
    bandit_export, setting
):
    x = clients(500, seed=7)
    graph = _load(bandit_export, exploration=setting).decide(x, explain=False)
    numpy = _load(bandit_export, exploration=setting, graph_choice=False).decide(x, explain=False)
    np.testing.assert_array_equal(graph.action, numpy.action)
    np.testing.assert_allclose(graph.propensity, numpy.propensity, rtol=1e-6)
    runtime = _load(bandit_export, exploration=setting)
    joint = runtime.guards.joint_mask(runtime.validate(x))
    np.testing.assert_array_equal(graph.allowed_actions, joint.sum(axis=1))
    if setting is None:
        assert (graph.propensity == 1).all() and (graph.action == graph.policy_action).all()
        assert graph.propensity.dtype == np.float64 and graph.allowed_actions.dtype == np.int64


def test_shadow_mode_and_tripped_circuits_decide_alike_with_and_without_the_graph(
    bandit_export, tmp_path
):
    n = 400
    x = clients(n, seed=8)
    rng = np.random.default_rng(2)
    firm = np.stack([rng.integers(0, k, n) for k in contract.NVEC], axis=1)
    firm[firm[:, 0] == 0, 1:] = 0
    circuit = tmp_path / "circuit.json"
    circuit.write_text(json.dumps({"tripped": ["saver_debt", "undeclared"]}))
    for kwargs, request in (
        ({"shadow": True}, {"firm_action": firm}),
        (
            {"shadow": True, "exploration": Exploration(epsilon=0.1, seed=2, policy_share=0.3)},
            {"firm_action": firm},
        ),
        ({"circuit": circuit}, {}),
        ({"circuit": circuit, "exploration": Exploration(epsilon=0.3, seed=5)}, {}),
    ):
        graph = _load(bandit_export, **kwargs).decide(x, explain=False, **request)
        numpy = _load(bandit_export, graph_choice=False, **kwargs).decide(
            x, explain=False, **request
        )
        _same(graph, numpy)
        runtime = _load(bandit_export, **kwargs)
        joint = runtime.guards.joint_mask(runtime.validate(x))
        assert joint[np.arange(n), multi_to_flat(graph.action)].all()

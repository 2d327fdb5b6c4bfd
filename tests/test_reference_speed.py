"""The references (the oracle, the deployable ceiling) are valued a block of clients at a time,
with each client's own quantities once a day: the same figures as valuing every candidate send
at once with the per-candidate formulas.

The recorded figures below were computed by that plain per-candidate valuation (one array of
every allowed send of the day) before the blocked one replaced it; the comparison's figures
are sums of discrete outcomes, exact on any machine, the action values' are checked to 1e-12
(numpy's exp and log may differ in the last bit between CPUs)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agents.ceiling import DeployableCeiling
from agents.config import AgentConfig
from agents.oracle import Oracle, candidate_blocks
from agents.registry import make_policy
from envs.config import Setup, eval_seeds, load_setup
from evaluation.compare import compare
from evaluation.rollout import begin_rollout

KEYS = (
    "eval/value",
    "eval/normalized_value",
    "eval/ceiling_share",
    "eval/retention",
    "eval/messages_per_client_week",
)
RECORDED = {
    "oracle": (2.8699166666666662, 1.0, 1.7664775609981087, 0.9816666666666667, 4.107055555555556),
    "deployable_ceiling": (
        1.4850833333333333,
        0.5660983315491267,
        1.0,
        0.9816666666666667,
        3.662944444444445,
    ),
    "no_send": (-0.32166666666666666, 0.0, 0.0, 0.9716666666666667, 0.0),
    "segment_rules": (
        0.10641666666666673,
        0.13412882842894072,
        0.236935565702689,
        0.9816666666666667,
        2.0078333333333336,
    ),
}
"""compare([segment_rules], 300 clients, 30 days, eval seeds 1000 and 1001, n_boot=50): the
estimates of KEYS per policy, as the plain valuation gave them"""
RECORDED_ROLLOUTS = {
    ("segment_rules", 1000): (12.950000000000044, 2561.0),
    ("no_send", 1000): (-130.0, 0.0),
    ("oracle", 1000): (838.55, 5309.0),
    ("deployable_ceiling", 1000): (412.79999999999995, 4704.0),
    ("segment_rules", 1001): (50.900000000000034, 2602.0),
    ("no_send", 1001): (-63.0, 0.0),
    ("oracle", 1001): (883.4, 5252.0),
    ("deployable_ceiling", 1001): (478.25, 4715.0),
}
"""(policy, seed) -> (summed value, messages delivered) of the same comparison's rollouts"""


@pytest.fixture(scope="module")
def setup() -> Setup:
    return load_setup()


def test_comparison_figures_are_those_of_the_plain_valuation(setup: Setup) -> None:
    result = compare(
        [make_policy(AgentConfig(name="segment_rules"), 0)],
        setup,
        300,
        30,
        seeds=eval_seeds(2),
        n_boot=50,
        progress=False,
    )
    got = {p: tuple(result.metrics[p][k][0] for k in KEYS) for p in RECORDED}
    assert got == RECORDED
    rollouts = {
        (r.policy, r.seed): (float(r.value.sum()), float(r.totals["sent"].sum()))
        for r in result.rollouts
    }
    assert rollouts == RECORDED_ROLLOUTS


def test_oracle_action_values_are_those_of_the_plain_valuation(setup: Setup) -> None:
    """Sum, max, min and count of the finite action values of 200 clients on days 0 and 5."""
    recorded = {
        0: (-4072.7768349309417, 0.9167583365683845, -1.9718051084740285, 58850),
        5: (-1652.9061496745746, 0.10930844114883448, -0.5178833403491749, 13670),
    }
    oracle = Oracle()
    core, obs = begin_rollout(oracle, setup, 200, 1000)
    for day in range(6):
        masks = core.joint_masks()
        values = oracle.action_values(masks)
        if day in recorded:
            finite = values[np.isfinite(values)]
            got = (float(finite.sum()), float(finite.max()), float(finite.min()), finite.size)
            want = recorded[day]
            assert got[3] == want[3], f"day {day}: {got[3]} allowed actions, want {want[3]}"
            for name, g, w in zip(("sum", "max", "min"), got[:3], want[:3], strict=True):
                assert math.isclose(g, w, rel_tol=1e-12), f"day {day} {name}: {g!r} != {w!r}"
        obs = core.step(oracle.act(obs, masks)).obs


def test_ceiling_beliefs_are_those_of_the_plain_valuation(setup: Setup) -> None:
    """Summed beliefs of 200 clients after 10 days of the ceiling's own sends."""
    recorded = {
        "slot_logp": -9362.710514026348,
        "open_mean": 105.76518845201117,
        "open_precision": 1251.1944743415056,
        "tone_mean": 70.21756973723966,
        "tone_precision": 11123.708790377304,
    }
    ceiling = DeployableCeiling(setup)
    core, obs = begin_rollout(ceiling, setup, 200, 1000)
    for day in range(10):
        step = core.step(ceiling.act(obs, core.joint_masks()))
        ceiling.after_day(day, step.outcomes, ~step.outcomes["churned"])
        obs = step.obs
    for name, want in recorded.items():
        got = float(ceiling.beliefs[name].sum())
        assert math.isclose(got, want, rel_tol=1e-12), f"{name}: {got!r} != {want!r}"


@pytest.mark.parametrize("block", [1, 97, 5000])
def test_oracle_values_do_not_depend_on_the_block_size(setup: Setup, block: int) -> None:
    whole, blocked = Oracle(), Oracle()
    whole.block = 1 << 40  # every allowed send of the day in one block
    blocked.block = block
    core, obs = begin_rollout(whole, setup, 150, 1001)
    blocked.bind(core)
    for _ in range(4):
        masks = core.joint_masks()
        one = whole.action_values(masks)
        assert np.array_equal(one, blocked.action_values(masks))
        obs = core.step(whole.act(obs, masks)).obs


def test_ceiling_does_not_depend_on_the_block_size(setup: Setup) -> None:
    whole, blocked = DeployableCeiling(setup), DeployableCeiling(setup)
    whole.planner.block, blocked.planner.block = 1 << 40, 61
    core, obs = begin_rollout(whole, setup, 150, 1000)
    blocked.start_rollout()
    for day in range(6):
        masks = core.joint_masks()
        actions = whole.act(obs, masks)
        assert np.array_equal(actions, blocked.act(obs, masks)), f"day {day}"
        step = core.step(actions)
        for policy in (whole, blocked):
            policy.after_day(day, step.outcomes, ~step.outcomes["churned"])
        obs = step.obs
    for name, belief in whole.beliefs.items():
        assert np.array_equal(belief, blocked.beliefs[name]), name


def test_candidate_blocks_cover_every_send_once() -> None:
    rng = np.random.default_rng(3)
    masks = rng.random((400, 361)) < 0.3
    masks[:, 0] = True
    masks[50:120, 1:] = False  # clients with nothing to send
    masks[-30:, 1:] = False
    blocks = candidate_blocks(masks, 500)
    assert blocks[0][0] == 0
    assert all(a[1] == b[0] for a, b in zip(blocks[:-1], blocks[1:], strict=True))
    assert blocks[-1][1] == len(masks)
    sends = [int(masks[lo:hi, 1:].sum()) for lo, hi in blocks]
    assert sum(sends) == int(masks[:, 1:].sum())
    assert max(sends) < 500 + 361  # a block closes at the client that reaches the size
    assert candidate_blocks(np.ones((3, 1), dtype=bool)) == []  # nothing to send: no block


def test_candidate_blocks_refuse_an_empty_block() -> None:
    with pytest.raises(ValueError, match="size must be at least 1"):
        candidate_blocks(np.ones((3, 361), dtype=bool), 0)

"""Heuristic policies act within masks; evaluation compares them on the same clients."""

from __future__ import annotations

import numpy as np
import pytest

from agents.base import Policy
from agents.heuristics import HEURISTICS
from envs.config import load_setup
from envs.core import CadenceCore
from envs.spaces import multi_to_flat
from evaluation import KPI_NAMES, evaluate, kpis, rollout
from evaluation.metrics import STATS


@pytest.mark.parametrize("name", sorted(HEURISTICS))
def test_heuristic_acts_within_masks(name):
    policy = HEURISTICS[name]()
    assert isinstance(policy, Policy)
    core = CadenceCore(load_setup(seed=2), 400)
    obs = core.reset()
    for _ in range(21):
        masks = core.joint_masks()
        actions = policy.act(obs, masks)
        assert actions.shape == (400, 4)
        assert masks[np.arange(400), multi_to_flat(actions)].all()
        r = core.step(actions)
        assert not r.outcomes["violation"].any()
        obs = r.obs


def test_rollouts_share_clients_and_luck():
    setup = load_setup()
    a = rollout(HEURISTICS["no_send"](), setup, 300, 30, seed=5)
    b = rollout(HEURISTICS["no_send"](), setup, 300, 30, seed=5)
    c = rollout(HEURISTICS["segment_rules"](), setup, 300, 30, seed=5)
    np.testing.assert_array_equal(a.value, b.value)
    np.testing.assert_array_equal(a.gender, c.gender)  # same clients under another policy


def test_kpis_have_contract_names_intervals_and_order_policies():
    setup = load_setup()
    policies = [HEURISTICS[n]() for n in ("no_send", "segment_rules", "batch_and_blast")]
    rollouts = evaluate(
        policies, setup, num_clients=1500, horizon_days=60, seeds=(1, 2), progress=False
    )
    table = {
        p.name: kpis([r for r in rollouts if r.policy == p.name], n_boot=100) for p in policies
    }
    for name, k in table.items():
        assert set(KPI_NAMES) <= set(k)
        for metric in STATS:  # bootstrapped: a real interval around the estimate
            mean, lo, hi = k[metric]
            assert lo <= mean + 1e-9 and mean <= hi + 1e-9, (name, metric, k[metric])
        for metric in (
            "eval/value",
            "eval/retention",
        ):  # every policy's value and retention vary by client
            assert k[metric][1] < k[metric][2], (name, metric, k[metric])
        assert k["eval/guardrail_violations"] == (
            0.0,
            0.0,
            0.0,
        )  # a count: reported without an interval
    for metric in ("eval/clicks_per_client", "eval/messages_per_client_week"):
        assert table["segment_rules"][metric][1] < table["segment_rules"][metric][2], metric
    seg, blast, silent = table["segment_rules"], table["batch_and_blast"], table["no_send"]
    assert seg["eval/value"][1] > silent["eval/value"][2]  # CIs separate
    assert blast["eval/retention"][2] < seg["eval/retention"][1]
    assert blast["eval/anxious_click_share"][0] > 0.2 > seg["eval/anxious_click_share"][0]
    assert silent["eval/messages_per_client_week"][0] == 0


def test_parallel_evaluation_gives_the_same_rollouts():
    setup = load_setup()
    policies = [HEURISTICS["fixed_weekly"](), HEURISTICS["segment_rules"]()]
    one = evaluate(policies, setup, 300, 20, seeds=(1, 2), progress=False)
    two = evaluate(policies, setup, 300, 20, seeds=(1, 2), progress=False, workers=2)
    assert [(r.policy, r.seed) for r in one] == [(r.policy, r.seed) for r in two]
    for a, b in zip(one, two, strict=True):
        np.testing.assert_array_equal(a.value, b.value)


def test_incremental_kpis_count_what_messages_caused_not_what_they_were_credited():
    from evaluation.metrics import incremental

    setup = load_setup()
    policies = [HEURISTICS[n]() for n in ("no_send", "batch_and_blast")]
    rollouts = evaluate(
        policies, setup, num_clients=1500, horizon_days=30, seeds=(1, 2), progress=False
    )
    silent = [r for r in rollouts if r.policy == "no_send"]
    blast = [r for r in rollouts if r.policy == "batch_and_blast"]
    assert incremental(silent, silent, n_boot=20) == {
        "eval/incremental_visits_per_client": (0.0, 0.0, 0.0),
        "eval/incremental_conversions_per_client": (0.0, 0.0, 0.0),
    }
    inc = incremental(blast, silent, n_boot=50)
    visits, lo, hi = inc["eval/incremental_visits_per_client"]
    clicks = np.mean(np.concatenate([r.totals["clicked"] for r in blast]))
    assert lo <= visits <= hi
    # every click is a visit, but some clicked clients would have come anyway
    assert 0 < visits < clicks
    with pytest.raises(ValueError, match="same seeds"):
        incremental(blast, silent[::-1], n_boot=5)
